"""Deterministic generators for the three bundled offline tasks: synth-sum, synth-mt, synth-gsm.

Why they exist: the real datasets (XSum, WMT14, GSM8K) need a download and hours of GPU time.
These tasks let the whole pipeline (SFT, teacher generation, distillation, evaluation) run
offline on a CPU in minutes while still rewarding model capacity and training:

- ``synth-sum``: news-like paragraphs (one key event, supporting details, quotes and distractor
  sentences about other places, people and numbers, in varied order). The target is a one-sentence
  abstractive summary that recombines facts from several sentences in new words, so copying the
  lead sentence is not enough.
- ``synth-mt``: English to German on a controlled grammar with real German morphology: gender,
  case (nominative/accusative/dative) and number agreement of articles, possessives and
  adjectives; verb-second and verb-final word order (fronted time adverbs, perfect tense,
  modal verbs, subordinate clauses with "weil"/"dass").
- ``synth-gsm``: grade-school word problems with 2-4 arithmetic operations and a worked solution
  in GSM8K's style, ending ``The answer is N.`` and ``#### N``.

Every task is generated from a fixed seed with :class:`random.Random` (whose integer-seeded
``random``/``randrange``/``choice``/``shuffle`` are stable across Python versions), never from
``hash()`` or set order, so every machine produces the same rows. Rows are deduplicated on their
source text and dealt out validation, test, train (evaluation splits first, so that resizing the
training split never changes the evaluation sets); the splits are therefore disjoint.

:func:`rows` returns rows in the schema of the real counterpart (``document/summary/id``;
``translation{en,de}``; ``question/answer``), so :mod:`xkd_cli.data.tasks` parses synthetic and real
data with the same code.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from xkd_cli.core.errors import XKDError

SEED = 1729
SPLIT_SIZES = {"train": 2000, "validation": 200, "test": 200}
SPLITS = tuple(SPLIT_SIZES)
_DEAL_ORDER = ("validation", "test", "train")  # eval splits first: stable when train size changes

Row = dict


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))]


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve")


def _num_en(n: int) -> str:
    """English number as a word up to twelve, digits above (newspaper style)."""
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


# ======================================================================================
# synth-sum: news paragraphs -> one-sentence abstractive summary
# ======================================================================================

TOWNS = ("Swansea", "Dundee", "Leeds", "Bristol", "Belfast", "Cardiff", "Aberdeen", "Norwich",
         "Exeter", "Derry", "Inverness", "Wrexham", "Hull", "Preston", "Carlisle", "Bangor",
         "Stirling", "Plymouth", "Newport", "Lincoln", "Galway", "Falkirk", "Durham", "Ipswich")
PEOPLE = (("Alice", "f"), ("James", "m"), ("Priya", "f"), ("Tom", "m"), ("Fatima", "f"),
          ("David", "m"), ("Sarah", "f"), ("Owen", "m"), ("Grace", "f"), ("Liam", "m"),
          ("Hannah", "f"), ("Rhys", "m"), ("Chloe", "f"), ("Marcus", "m"), ("Niamh", "f"),
          ("Ben", "m"), ("Aisha", "f"), ("Callum", "m"), ("Emma", "f"), ("Kieran", "m"))
SURNAMES = ("Evans", "Patel", "Murray", "Hughes", "Campbell", "Walsh", "Jones", "Khan", "Roberts",
            "Fraser", "Doyle", "Price", "Morgan", "Reid", "Bennett", "Lloyd", "Quinn", "Shaw")
COMPANY_STEMS = ("Northgate", "Harbour", "Redwood", "Bluebell", "Kestrel", "Ironbridge",
                 "Meridian", "Oakfield", "Silverline", "Thistle", "Westmoor", "Highfield")
# kind of firm -> (what it makes, the site noun, a description)
COMPANY_KINDS = {
    "Foods": ("ready meals", "factory", "food"),
    "Bakeries": ("bread and cakes", "bakery", "baking"),
    "Engineering": ("aircraft parts", "plant", "engineering"),
    "Textiles": ("carpets", "mill", "textiles"),
    "Motors": ("car parts", "factory", "motor parts"),
    "Packaging": ("cardboard boxes", "plant", "packaging"),
}
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
RIVERS = ("Tay", "Severn", "Ouse", "Wye", "Derwent", "Tweed", "Eden", "Trent", "Dee", "Clyde")
ROADS = ("A9", "M4", "A1", "M62", "A30", "A55", "M8", "A38")


@dataclass(frozen=True)
class _Story:
    """One event: its lead, the other sentences that carry summary facts, optional extras."""

    lead: str
    facts: tuple[str, ...]   # must appear (they hold facts the summary uses)
    extras: tuple[str, ...]  # quotes/background, dropped first when the document is too long
    summary: str


class _SumRng:
    """Draws names, towns and companies without repeats inside one story."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self._used: set[str] = set()

    def _fresh(self, make: Callable[[], tuple[str, str]]) -> tuple[str, str]:
        """Draw (name, attribute) until the name is new in this story."""
        for _ in range(100):
            name, attribute = make()
            if name not in self._used:
                self._used.add(name)
                return name, attribute
        raise RuntimeError("synth-sum ran out of distinct names")  # pools are far larger than needed

    def town(self) -> str:
        return self._fresh(lambda: (_pick(self.rng, TOWNS), ""))[0]

    def person(self) -> tuple[str, str]:
        """(full name, gender "m"/"f")."""
        def make() -> tuple[str, str]:
            first, gender = _pick(self.rng, PEOPLE)
            return f"{first} {_pick(self.rng, SURNAMES)}", gender
        return self._fresh(make)

    def company(self) -> tuple[str, str]:
        """(company name, kind: a key of COMPANY_KINDS)."""
        def make() -> tuple[str, str]:
            kind = _pick(self.rng, tuple(COMPANY_KINDS))
            return f"{_pick(self.rng, COMPANY_STEMS)} {kind}", kind
        return self._fresh(make)

    def pick(self, seq):
        return _pick(self.rng, seq)

    def randint(self, lo: int, hi: int, step: int = 1) -> int:
        return self.rng.randrange(lo, hi + 1, step)


def _story_closure(r: _SumRng) -> _Story:
    co, kind = r.company()
    product, site, _ = COMPANY_KINDS[kind]
    town, n = r.town(), r.randint(40, 900, 10)
    when = r.pick(("by the end of the year", "next spring", f"in {r.pick(MONTHS)}", "within months"))
    union, _ = r.person()
    v = r.randint(0, 1)
    lead = (f"{co} has confirmed that its {product} {site} in {town} will close {when}.",
            f"Bosses at {co} have told staff that the {town} {site}, which makes {product}, is to shut {when}.")[v]
    facts = (r.pick((f"The site currently employs {n} people.", f"A total of {n} workers are based there.",
                     f"About {n} staff work at the {site}.")),)
    extras = (r.pick(("\"We know this news will be very difficult for our staff,\" a company spokesperson said.",
                      f"Union official {union} described the decision as \"a hammer blow for {town}\".")),
              r.pick((f"{co} said rising energy costs had made the {site} unprofitable.",
                      f"The firm was founded in {r.randint(1950, 2005)} and has other sites across the UK.")))
    summary = (f"{n} jobs are to go after {co} announced it will shut its {town} {site}.",
               f"The closure of the {co} {site} in {town} will cost {n} jobs.")[v]
    return _Story(lead, facts, extras, summary)


def _story_takeover(r: _SumRng) -> _Story:
    buyer, _ = r.company()
    target, kind = r.company()
    desc = COMPANY_KINDS[kind][2]
    town, m, n = r.town(), r.randint(2, 95), r.randint(30, 600, 10)
    boss, _ = r.person()
    v = r.randint(0, 1)
    lead = (f"{buyer} has agreed a deal to take over {target} for £{m}m.",
            f"{target}, the {desc} firm, has been bought by {buyer} in a deal worth £{m} million.")[v]
    facts = (f"{target} employs {n} staff at its headquarters in {town}.",)
    extras = (r.pick((f"Chief executive {boss} said the move would \"create a stronger business for our customers\".",
                      "The deal still needs approval from competition regulators.")),
              f"Shares in {buyer} rose by {r.randint(2, 15)}% after the announcement.")
    summary = (f"{buyer} is to buy {town} firm {target} for £{m}m.",
               f"{town} company {target} has been sold to rival {buyer} in a £{m}m deal.")[v]
    return _Story(lead, facts, extras, summary)


def _story_football(r: _SumRng) -> _Story:
    winner = f"{r.town()} {r.pick(('United', 'Rovers', 'City', 'Athletic', 'Town'))}"
    loser = f"{r.town()} {r.pick(('United', 'Rovers', 'City', 'Athletic', 'Albion'))}"
    goals = r.randint(1, 3)
    w = goals + r.randint(0, 2)
    lo = r.randint(0, w - 1)
    scorer, g = r.person()
    pron = "he" if g == "m" else "she"
    minute = r.randint(3, 88)
    v = r.randint(0, 1)
    lead = (f"{winner} beat {loser} {w}-{lo} on {r.pick(DAYS)}.",
            f"{loser} were beaten {w}-{lo} by {winner} in front of their own fans.")[v]
    tally = ("", "once", "twice", "three times")[goals]
    facts = (f"{scorer} opened the scoring for the winners after {minute} minutes and {pron} found the net {tally} in all.",)
    extras = (f"A crowd of {r.randint(900, 9000, 100)} watched the game.",
              _manager_quote(r, loser))
    scored = {1: f"{scorer}'s goal helped", 2: f"{scorer} scored twice as", 3: f"A hat-trick from {scorer} helped"}[goals]
    summary = (f"{scored} {winner} beat {loser} by {w} goals to {lo}.",
               f"{scored} {winner} beat {loser} {w}-{lo} away from home.")[v]
    return _Story(lead, facts, extras, summary)


def _manager_quote(r: _SumRng, team: str) -> str:
    manager, g = r.person()
    return f"{team} manager {manager} said {'his' if g == 'm' else 'her'} side had been \"second best all afternoon\"."


def _story_fire(r: _SumRng) -> _Story:
    building = r.pick(("warehouse", "block of flats", "school", "restaurant", "hotel", "farm building"))
    town, street = r.town(), f"{r.pick(SURNAMES)} Road"
    hurt, engines = r.randint(2, 9), r.randint(3, 12)
    day = r.pick(DAYS)
    v = r.randint(0, 1)
    lead = (f"Firefighters were called to a {building} on {street} in {town} on {day} evening.",
            f"A large fire broke out at a {building} in {town}'s {street} early on {day}.")[v]
    facts = (f"{_cap(_num_en(hurt))} people were taken to hospital with minor injuries.",)
    extras = (f"{_cap(_num_en(engines))} fire engines attended the scene.",
              r.pick(("The cause of the blaze is being investigated.",
                      "Police closed nearby roads for several hours.")))
    summary = (f"{_cap(_num_en(hurt))} people have been treated in hospital after a blaze at a {building} in {town}.",
               f"A {building} in {town} was badly damaged by fire, leaving {_num_en(hurt)} people needing treatment.")[v]
    return _Story(lead, facts, extras, summary)


_CRIMES = (("a robbery at a petrol station", "a petrol station robbery"),
           ("an assault outside a nightclub", "a nightclub attack"),
           ("a burglary at a jewellery shop", "a jewellery shop raid"),
           ("a crash in which a cyclist was badly hurt", "a crash that injured a cyclist"),
           ("the theft of cash from a post office", "a post office theft"))


def _story_arrest(r: _SumRng) -> _Story:
    age, town, day = r.randint(17, 68), r.town(), r.pick(DAYS)
    long, short = r.pick(_CRIMES)
    v = r.randint(0, 1)
    lead = (f"Police in {town} have arrested a man following {long} on {day}.",
            f"A man is being held by police after {long} in {town}.")[v]
    facts = (f"The suspect, who is {age}, was detained at an address nearby.",)
    extras = (f"Officers said a {r.randint(20, 80)}-year-old woman was treated for shock.",
              "Detectives are appealing for witnesses to come forward.")
    summary = (f"A {age}-year-old man has been arrested after {short} in {town}.",
               f"Detectives in {town} are questioning a man aged {age} over {short}.")[v]
    return _Story(lead, facts, extras, summary)


def _story_appointment(r: _SumRng) -> _Story:
    org_town = r.town()
    org, role = r.pick(((f"{org_town} University", "vice-chancellor"),
                        (f"{org_town} Rovers", "head coach"),
                        (f"the {org_town} Museum", "director"),
                        (f"{org_town} Hospital", "chief executive")))
    new, g = r.person()
    old, _ = r.person()
    prev, _ = r.company()
    pron = "He" if g == "m" else "She"
    years = r.randint(3, 19)
    v = r.randint(0, 1)
    lead = (f"{_cap(org)} has appointed {new} to the post of {role}.",
            f"{new}, who previously worked at {prev}, is to become the next {role} of {org}.")[v]
    facts = (f"{pron} replaces {old}, who stepped down in {r.pick(MONTHS)} after {years} years in charge.",)
    extras = (f"{pron} said it was \"an honour to be given this chance\".",
              f"The appointment follows a search lasting {_num_en(r.randint(3, 11))} months.")
    summary = (f"{new} has been named the new {role} of {org}, succeeding {old}.",
               f"{_cap(org)} has chosen former {prev} manager {new} to replace {old} as {role}.")[v]
    return _Story(lead, facts, extras, summary)


def _story_council(r: _SumRng) -> _Story:
    project = r.pick(("swimming pool", "library", "cycle path", "bus station", "sports centre", "care home"))
    town, m = r.town(), r.randint(2, 40)
    yes = r.randint(20, 40)
    no = r.randint(2, yes - 5)
    v = r.randint(0, 1)
    lead = (f"Councillors in {town} have voted {yes} to {no} in favour of plans for a new {project}.",
            f"A new {project} is set to be built in {town} after the council backed the scheme.")[v]
    facts = (f"The project is expected to cost £{m}m and could open in {r.randint(2026, 2030)}.",)
    extras = ("Opponents had raised concerns about traffic and parking near the site.",
              f"Council leader {r.person()[0]} said the decision was \"great news for families\".")
    summary = (f"Plans for a £{m}m {project} in {town} have been approved by the council.",
               f"{town} is to get a new {project} costing £{m}m, after councillors gave the go-ahead.")[v]
    return _Story(lead, facts, extras, summary)


def _story_flood(r: _SumRng) -> _Story:
    town, river = r.town(), r.pick(RIVERS)
    homes, days = r.randint(12, 400), r.randint(2, 5)
    v = r.randint(0, 1)
    lead = (f"Heavy rain has caused the River {river} to burst its banks in {town}.",
            f"Residents in {town} are cleaning up after {_num_en(days)} days of heavy rain.")[v]
    facts = ((f"About {homes} homes were flooded, the council said.",)
             if v == 0 else
             (f"The council said {homes} homes had been flooded when the River {river} rose.",))
    extras = (f"Several roads, including the {r.pick(ROADS)}, were closed.",
              "Forecasters have warned that more rain is expected later in the week.")
    summary = (f"Around {homes} homes in {town} have been flooded after the River {river} overflowed.",
               f"{_cap(_num_en(days))} days of rain have left {homes} homes under water in {town}.")[v]
    return _Story(lead, facts, extras, summary)


def _story_strike(r: _SumRng) -> _Story:
    workers = r.pick(("bus drivers", "nurses", "refuse collectors", "teachers", "rail staff", "postal workers"))
    reason = r.pick(("pay", "working hours", "job cuts", "pensions"))
    town, days, n = r.town(), r.randint(2, 5), r.randint(50, 900, 10)
    v = r.randint(0, 1)
    lead = (f"{_cap(workers)} in {town} are to walk out for {_num_en(days)} days in a dispute over {reason}.",
            f"Union members in {town} have voted for industrial action in a row over {reason}.")[v]
    facts = ((f"The action by {n} staff will begin on {r.pick(DAYS)}.",)
             if v == 0 else
             (f"The {n} {workers} will stop work for {_num_en(days)} days from {r.pick(DAYS)}.",))
    extras = (f"Union official {r.person()[0]} said members had been \"left with no choice\".",
              "Employers said they were disappointed and urged staff to return to talks.")
    summary = (f"{n} {workers} in {town} will strike for {days} days over {reason}.",
               f"{town} {workers} are to stage a {days}-day strike over {reason}, affecting {n} staff.")[v]
    return _Story(lead, facts, extras, summary)


_INVENTIONS = (("blood test", "detect bowel cancer earlier", "patients"),
               ("drone", "help count seabirds on cliffs", "colonies"),
               ("type of concrete", "cut emissions from building", "sites"),
               ("phone app", "warn farmers about frost", "farms"),
               ("hearing aid", "filter out background noise", "volunteers"))


def _story_research(r: _SumRng) -> _Story:
    town = r.town()
    thing, benefit, subjects = r.pick(_INVENTIONS)
    lead_name, _ = r.person()
    n = r.randint(20, 500)
    v = r.randint(0, 1)
    lead = (f"Scientists at the University of {town} say they have developed a {thing} that could {benefit}.",
            f"A team from the University of {town} has spent {_num_en(r.randint(2, 9))} years working on a new {thing}.")[v]
    facts = ((f"The team, led by Professor {lead_name}, tested it on {n} {subjects}.",)
             if v == 0 else
             (f"Early trials on {n} {subjects} suggest it could {benefit}, said Professor {lead_name}.",))
    extras = ("The findings have been published in a scientific journal.",
              "The researchers now hope to carry out larger trials next year.")
    summary = (f"A {thing} that could {benefit} has been developed by researchers in {town}.",
               f"{town} researchers say their new {thing} could {benefit}, after trials on {n} {subjects}.")[v]
    return _Story(lead, facts, extras, summary)


_STORIES = (_story_closure, _story_takeover, _story_football, _story_fire, _story_arrest,
            _story_appointment, _story_council, _story_flood, _story_strike, _story_research)


_DISTRACTORS: tuple[Callable[[_SumRng], str], ...] = (
    lambda r: f"Separately, {r.town()} council said it had received {r.randint(20, 900)} complaints about potholes this year.",
    lambda r: f"Forecasters expect temperatures to reach {r.randint(12, 29)}C in {r.town()} at the weekend.",
    lambda r: f"Meanwhile, a charity run in {r.town()} raised £{r.randint(2, 60)},000 for a local hospice.",
    lambda r: f"The {r.town()} food festival, which attracted {r.randint(2, 40)},000 visitors last year, returns next month.",
    lambda r: f"Roadworks on the {r.pick(ROADS)} near {r.town()} are due to finish in {r.pick(MONTHS)}.",
    lambda r: f"Last year, {r.company()[0]} cut {r.randint(20, 500, 10)} jobs at its site in {r.town()}.",
    lambda r: f"Figures published on {r.pick(DAYS)} showed unemployment in the region fell to {r.randint(3, 8)}%.",
    lambda r: f"{r.person()[0]}, who runs a cafe in {r.town()}, said trade had been slow since {r.pick(MONTHS)}.",
    lambda r: f"A new bus route between {r.town()} and {r.town()} will start in {r.pick(MONTHS)}.",
)
"""Sentences about other places, people and numbers: realistic noise the summary must ignore."""


SUM_MIN_WORDS, SUM_MAX_WORDS = 60, 120


def _make_sum(rng: random.Random) -> tuple[str, Row]:
    r = _SumRng(rng)
    story = _pick(rng, _STORIES)(r)
    extras = list(story.extras)
    spare = list(_DISTRACTORS)
    rng.shuffle(spare)  # distinct distractor kinds, drawn in a random order
    distractors = [spare.pop()(r) for _ in range(rng.randint(2, 3))]
    while True:
        body = list(story.facts) + extras + distractors
        rng.shuffle(body)
        # The lead usually opens the piece (as in news); sometimes a background line comes first.
        sentences = [story.lead] + body if rng.random() < 0.75 else body[:1] + [story.lead] + body[1:]
        document = " ".join(sentences)
        words = len(document.split())
        if words < SUM_MIN_WORDS and spare:
            distractors.append(spare.pop()(r))
        elif words > SUM_MAX_WORDS and extras:
            extras.pop()
        elif words > SUM_MAX_WORDS and len(distractors) > 1:
            distractors.pop()
        else:
            return document, {"document": document, "summary": story.summary}


# ======================================================================================
# synth-mt: English -> German, controlled grammar with real agreement
# ======================================================================================

@dataclass(frozen=True)
class Noun:
    en: str
    en_pl: str
    de: str
    de_pl: str
    gender: str                 # "m" | "f" | "n"
    tags: frozenset[str]

    def de_form(self, plural: bool, case: str) -> str:
        """German noun form; only the dative plural is inflected here (no weak nouns in the lexicon)."""
        if not plural:
            return self.de
        if case == "dat" and not self.de_pl.endswith(("n", "s")):
            return self.de_pl + "n"  # den Kindern, den Hunden; but den Frauen, den Autos
        return self.de_pl


def _n(en, en_pl, de, de_pl, gender, *tags) -> Noun:
    return Noun(en, en_pl, de, de_pl, gender, frozenset(tags))


NOUNS = (
    _n("man", "men", "Mann", "Männer", "m", "person"),
    _n("woman", "women", "Frau", "Frauen", "f", "person"),
    _n("child", "children", "Kind", "Kinder", "n", "person"),
    _n("teacher", "teachers", "Lehrer", "Lehrer", "m", "person"),
    _n("doctor", "doctors", "Arzt", "Ärzte", "m", "person"),
    _n("girl", "girls", "Mädchen", "Mädchen", "n", "person"),
    _n("friend", "friends", "Freund", "Freunde", "m", "person"),
    _n("sister", "sisters", "Schwester", "Schwestern", "f", "person"),
    _n("brother", "brothers", "Bruder", "Brüder", "m", "person"),
    _n("cook", "cooks", "Koch", "Köche", "m", "person"),
    _n("baker", "bakers", "Bäcker", "Bäcker", "m", "person"),
    _n("grandmother", "grandmothers", "Großmutter", "Großmütter", "f", "person"),
    _n("dog", "dogs", "Hund", "Hunde", "m", "animal"),
    _n("cat", "cats", "Katze", "Katzen", "f", "animal"),
    _n("horse", "horses", "Pferd", "Pferde", "n", "animal"),
    _n("bird", "birds", "Vogel", "Vögel", "m", "animal"),
    _n("cow", "cows", "Kuh", "Kühe", "f", "animal"),
    _n("mouse", "mice", "Maus", "Mäuse", "f", "animal"),
    _n("pig", "pigs", "Schwein", "Schweine", "n", "animal"),
    _n("book", "books", "Buch", "Bücher", "n", "thing", "readable"),
    _n("letter", "letters", "Brief", "Briefe", "m", "thing", "readable"),
    _n("newspaper", "newspapers", "Zeitung", "Zeitungen", "f", "thing", "readable"),
    _n("apple", "apples", "Apfel", "Äpfel", "m", "thing", "food"),
    _n("cake", "cakes", "Kuchen", "Kuchen", "m", "thing", "food"),
    _n("egg", "eggs", "Ei", "Eier", "n", "thing", "food"),
    _n("sausage", "sausages", "Wurst", "Würste", "f", "thing", "food"),
    _n("table", "tables", "Tisch", "Tische", "m", "thing"),
    _n("chair", "chairs", "Stuhl", "Stühle", "m", "thing"),
    _n("key", "keys", "Schlüssel", "Schlüssel", "m", "thing"),
    _n("ball", "balls", "Ball", "Bälle", "m", "thing"),
    _n("hat", "hats", "Hut", "Hüte", "m", "thing"),
    _n("shoe", "shoes", "Schuh", "Schuhe", "m", "thing"),
    _n("car", "cars", "Auto", "Autos", "n", "thing"),
    _n("bag", "bags", "Tasche", "Taschen", "f", "thing"),
    _n("lamp", "lamps", "Lampe", "Lampen", "f", "thing"),
    _n("flower", "flowers", "Blume", "Blumen", "f", "thing"),
    _n("clock", "clocks", "Uhr", "Uhren", "f", "thing"),
    _n("bottle", "bottles", "Flasche", "Flaschen", "f", "thing"),
    _n("cup", "cups", "Tasse", "Tassen", "f", "thing"),
    _n("picture", "pictures", "Bild", "Bilder", "n", "thing"),
    _n("glass", "glasses", "Glas", "Gläser", "n", "thing"),
    _n("bicycle", "bicycles", "Fahrrad", "Fahrräder", "n", "thing"),
    _n("present", "presents", "Geschenk", "Geschenke", "n", "thing"),
    _n("shirt", "shirts", "Hemd", "Hemden", "n", "thing"),
    _n("knife", "knives", "Messer", "Messer", "n", "thing"),
    _n("garden", "gardens", "Garten", "Gärten", "m", "place"),
    _n("park", "parks", "Park", "Parks", "m", "place"),
    _n("forest", "forests", "Wald", "Wälder", "m", "place"),
    _n("shop", "shops", "Laden", "Läden", "m", "place"),
    _n("kitchen", "kitchens", "Küche", "Küchen", "f", "place"),
    _n("school", "schools", "Schule", "Schulen", "f", "place"),
    _n("city", "cities", "Stadt", "Städte", "f", "place"),
    _n("village", "villages", "Dorf", "Dörfer", "n", "place"),
    _n("office", "offices", "Büro", "Büros", "n", "place"),
    _n("house", "houses", "Haus", "Häuser", "n", "place", "thing"),
    _n("room", "rooms", "Zimmer", "Zimmer", "n", "place"),
)
NOUN_BY_EN = {n.en: n for n in NOUNS}


@dataclass(frozen=True)
class Adjective:
    en: str
    de: str          # predicative form: "Der Hund ist müde."
    stem: str        # attributive stem that takes the ending: teur-e, dunkl-e, müd-e
    tags: frozenset[str]

    def de_form(self, ending: str) -> str:
        return self.stem + ending


def _a(en, de, stem, *tags) -> Adjective:
    return Adjective(en, de, stem, frozenset(tags))


_ANY = ("person", "animal", "thing", "place")
ADJECTIVES = (
    _a("big", "groß", "groß", *_ANY), _a("small", "klein", "klein", *_ANY),
    _a("old", "alt", "alt", *_ANY), _a("new", "neu", "neu", "thing", "place"),
    _a("young", "jung", "jung", "person", "animal"), _a("beautiful", "schön", "schön", *_ANY),
    _a("red", "rot", "rot", "thing"), _a("blue", "blau", "blau", "thing"),
    _a("green", "grün", "grün", "thing"), _a("black", "schwarz", "schwarz", "animal", "thing"),
    _a("white", "weiß", "weiß", "animal", "thing"), _a("brown", "braun", "braun", "animal", "thing"),
    _a("cheap", "billig", "billig", "thing"), _a("expensive", "teuer", "teur", "thing"),
    _a("heavy", "schwer", "schwer", "thing"), _a("clean", "sauber", "sauber", "thing", "place"),
    _a("dark", "dunkel", "dunkl", "thing", "place"), _a("quiet", "ruhig", "ruhig", "place", "person"),
    _a("happy", "glücklich", "glücklich", "person", "animal"), _a("tired", "müde", "müd", "person", "animal"),
    _a("hungry", "hungrig", "hungrig", "person", "animal"),
    _a("friendly", "freundlich", "freundlich", "person", "animal"),
)

_G = ("m", "f", "n", "pl")
# Definite article and the endings of der-words (dies-) and ein-words (ein, kein, mein, ...).
DEF_ARTICLE = {"nom": dict(zip(_G, ("der", "die", "das", "die"))),
               "acc": dict(zip(_G, ("den", "die", "das", "die"))),
               "dat": dict(zip(_G, ("dem", "der", "dem", "den")))}
DER_WORD_ENDINGS = {"nom": dict(zip(_G, ("er", "e", "es", "e"))),
                    "acc": dict(zip(_G, ("en", "e", "es", "e"))),
                    "dat": dict(zip(_G, ("em", "er", "em", "en")))}
EIN_WORD_ENDINGS = {"nom": dict(zip(_G, ("", "e", "", "e"))),
                    "acc": dict(zip(_G, ("en", "e", "", "e"))),
                    "dat": dict(zip(_G, ("em", "er", "em", "en")))}
# Adjective endings: weak after der-words, mixed after ein-words, strong with no inflected determiner.
ADJ_ENDINGS = {
    "weak": {"nom": dict(zip(_G, ("e", "e", "e", "en"))), "acc": dict(zip(_G, ("en", "e", "e", "en"))),
             "dat": dict(zip(_G, ("en", "en", "en", "en")))},
    "mixed": {"nom": dict(zip(_G, ("er", "e", "es", "en"))), "acc": dict(zip(_G, ("en", "e", "es", "en"))),
              "dat": dict(zip(_G, ("en", "en", "en", "en")))},
    "strong": DER_WORD_ENDINGS,
}
POSSESSIVES = {"my": "mein", "your": "dein", "his": "sein", "her": "ihr", "our": "unser", "their": "ihr"}
GERMAN_NUMBERS = ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun",
                  "zehn", "elf", "zwölf")


@dataclass(frozen=True)
class NP:
    """A noun phrase plan. ``det``: def | this | indef | poss:<en possessive> | num:<n> | bare | some | many."""

    noun: Noun
    det: str
    plural: bool
    adj: Adjective | None = None

    def en(self) -> str:
        noun = self.noun.en_pl if self.plural else self.noun.en
        words = ([self.adj.en] if self.adj else []) + [noun]
        kind, _, arg = self.det.partition(":")
        if kind == "def":
            det = "the"
        elif kind == "this":
            det = "these" if self.plural else "this"
        elif kind == "indef":
            det = "an" if words[0][0] in "aeiou" else "a"
        elif kind == "poss":
            det = arg
        elif kind == "num":
            det = _num_en(int(arg))
        elif kind == "bare":
            det = ""
        else:  # some | many
            det = kind
        return " ".join(([det] if det else []) + words)

    def de(self, case: str) -> str:
        g = "pl" if self.plural else self.noun.gender
        kind, _, arg = self.det.partition(":")
        if kind == "def":
            det, decl = DEF_ARTICLE[case][g], "weak"
        elif kind == "this":
            det, decl = "dies" + DER_WORD_ENDINGS[case][g], "weak"
        elif kind in ("indef", "poss"):
            stem = "ein" if kind == "indef" else POSSESSIVES[arg]
            # After meine/keine in the plural the adjective is weak, in the singular mixed.
            det, decl = stem + EIN_WORD_ENDINGS[case][g], "weak" if self.plural else "mixed"
        elif kind == "num":
            n = int(arg)
            det, decl = (GERMAN_NUMBERS[n] if n < len(GERMAN_NUMBERS) else str(n)), "strong"
        elif kind == "bare":
            det, decl = "", "strong"
        else:  # some | many: einige/viele decline like strong adjectives
            det = {"some": "einig", "many": "viel"}[kind] + DER_WORD_ENDINGS[case][g]
            decl = "strong"
        words = [det] if det else []
        if self.adj:
            words.append(self.adj.de_form(ADJ_ENDINGS[decl][case][g]))
        words.append(self.noun.de_form(self.plural, case))
        return " ".join(words)


@dataclass(frozen=True)
class Pronoun:
    en: str
    de: str
    person: int  # index into the six-form conjugation tables: ich du er/sie wir ihr sie
    plural: bool


PRONOUNS = (Pronoun("I", "ich", 0, False), Pronoun("you", "du", 1, False), Pronoun("he", "er", 2, False),
            Pronoun("she", "sie", 2, False), Pronoun("we", "wir", 3, True), Pronoun("they", "sie", 5, True))


def _subject_person(subj) -> int:
    if isinstance(subj, Pronoun):
        return subj.person
    return 5 if subj.plural else 2


def _en_subject(subj) -> str:
    return subj.en if isinstance(subj, Pronoun) else subj.en()


def _de_subject(subj) -> str:
    return subj.de if isinstance(subj, Pronoun) else subj.de("nom")


def _en_third_singular(subj) -> bool:
    return _subject_person(subj) == 2


@dataclass(frozen=True)
class Verb:
    en: str
    en_3sg: str
    en_past: str
    de_inf: str
    de_present: tuple[str, ...]  # ich du er wir ihr sie
    de_participle: str
    subj_tags: frozenset[str]
    obj_tags: frozenset[str]
    ditransitive: bool = False


def _v(en, en_3sg, en_past, de_inf, present, participle, subj, obj, ditransitive=False) -> Verb:
    return Verb(en, en_3sg, en_past, de_inf, tuple(present.split()), participle,
                frozenset(subj), frozenset(obj), ditransitive)


_ANIMATE = ("person", "animal")
VERBS = (
    _v("see", "sees", "saw", "sehen", "sehe siehst sieht sehen seht sehen", "gesehen", _ANIMATE, _ANY),
    _v("buy", "buys", "bought", "kaufen", "kaufe kaufst kauft kaufen kauft kaufen", "gekauft", ("person",), ("thing", "animal")),
    _v("find", "finds", "found", "finden", "finde findest findet finden findet finden", "gefunden", _ANIMATE, ("thing", "animal")),
    _v("need", "needs", "needed", "brauchen", "brauche brauchst braucht brauchen braucht brauchen", "gebraucht", ("person",), ("thing",)),
    _v("like", "likes", "liked", "mögen", "mag magst mag mögen mögt mögen", "gemocht", _ANIMATE, ("person", "animal", "thing")),
    _v("carry", "carries", "carried", "tragen", "trage trägst trägt tragen tragt tragen", "getragen", ("person",), ("thing", "animal")),
    _v("wash", "washes", "washed", "waschen", "wasche wäschst wäscht waschen wascht waschen", "gewaschen", ("person",), ("thing", "animal")),
    _v("sell", "sells", "sold", "verkaufen", "verkaufe verkaufst verkauft verkaufen verkauft verkaufen", "verkauft", ("person",), ("thing", "animal")),
    _v("visit", "visits", "visited", "besuchen", "besuche besuchst besucht besuchen besucht besuchen", "besucht", ("person",), ("person",)),
    _v("paint", "paints", "painted", "malen", "male malst malt malen malt malen", "gemalt", ("person",), ("person", "animal", "thing")),
    _v("read", "reads", "read", "lesen", "lese liest liest lesen lest lesen", "gelesen", ("person",), ("readable",)),
    _v("eat", "eats", "ate", "essen", "esse isst isst essen esst essen", "gegessen", _ANIMATE, ("food",)),
    _v("give", "gives", "gave", "geben", "gebe gibst gibt geben gebt geben", "gegeben", ("person",), ("thing",), True),
    _v("show", "shows", "showed", "zeigen", "zeige zeigst zeigt zeigen zeigt zeigen", "gezeigt", ("person",), ("thing", "animal"), True),
)
HABEN = tuple("habe hast hat haben habt haben".split())
MODALS = {"want": ("wants", tuple("will willst will wollen wollt wollen".split())),
          "can": ("can", tuple("kann kannst kann können könnt können".split()))}
SEIN_PRESENT = tuple("bin bist ist sind seid sind".split())
SEIN_PAST = tuple("war warst war waren wart waren".split())
EN_BE_PRESENT = ("am", "are", "is", "are", "are", "are")
EN_BE_PAST = ("was", "were", "was", "were", "were", "were")
TIMES = {  # tense -> (English, German) adverbials that fit it
    "present": (("today", "heute"), ("now", "jetzt"), ("every day", "jeden Tag"),
                ("in the morning", "am Morgen"), ("in the evening", "am Abend"), ("on Sundays", "sonntags")),
    "past": (("yesterday", "gestern"), ("last week", "letzte Woche"), ("on Monday", "am Montag"),
             ("last year", "letztes Jahr"), ("in the morning", "am Morgen")),
    "modal": (("today", "heute"), ("tomorrow", "morgen"), ("now", "jetzt"), ("next week", "nächste Woche"),
              ("on Saturday", "am Samstag")),
}


@dataclass(frozen=True)
class Clause:
    """A clause plan, realised in English and in German (main, time-fronted or subordinate order).

    kind: "act" (subject verb [indirect object] object), "be" (subject is adjective) or
    "exist" (there is/are NP = es gibt + accusative). tense: present | past | want | can.
    English past is rendered with the German perfect (haben + participle), as spoken German does.
    """

    kind: str
    tense: str
    subj: object = None           # Pronoun | NP (unused for "exist")
    verb: Verb | None = None
    obj: NP | None = None
    iobj: NP | None = None        # dative object of give/show
    adj: Adjective | None = None  # predicate of "be"
    with_np: NP | None = None     # "with ..." = mit + dative
    place: NP | None = None       # "in ..." = in + dative
    time: tuple[str, str] | None = None
    front_time: bool = False

    # ---- English ----
    def en(self) -> str:
        time = self.time[0] if self.time else None
        core = self._en_core()
        if self.with_np:
            core += f" with {self.with_np.en()}"
        if self.place:
            core += f" in {self.place.en()}"
        if time and self.front_time:
            return f"{time} {core}"
        return f"{core} {time}" if time else core

    def _en_core(self) -> str:
        if self.kind == "exist":
            be = (EN_BE_PAST if self.tense == "past" else EN_BE_PRESENT)[5 if self.obj.plural else 2]
            return f"there {be} {self.obj.en()}"
        subj = _en_subject(self.subj)
        person = _subject_person(self.subj)
        if self.kind == "be":
            be = (EN_BE_PAST if self.tense == "past" else EN_BE_PRESENT)[person]
            return f"{subj} {be} {self.adj.en}"
        v = self.verb
        if self.tense == "present":
            verb = v.en_3sg if person == 2 else v.en
        elif self.tense == "past":
            verb = v.en_past
        else:
            modal_3sg = MODALS[self.tense][0]
            verb = f"{modal_3sg if person == 2 else self.tense}{' to' if self.tense == 'want' else ''} {v.en}"
        objects = f"{self.iobj.en()} {self.obj.en()}" if self.iobj else self.obj.en()
        return f"{subj} {verb} {objects}"

    # ---- German ----
    def de(self, order: str = "main") -> str:
        """order: "main" (verb second), or "sub" (verb last, after weil/dass). Fronted time overrides main."""
        subj, finite, middle, final = self._de_parts()
        time = self.time[1] if self.time else None
        if order == "sub":
            words = [subj] + ([time] if time else []) + middle + ([final] if final else []) + [finite]
        elif time and self.front_time:
            words = [time, finite, subj] + middle + ([final] if final else [])
        else:
            words = [subj, finite] + ([time] if time else []) + middle + ([final] if final else [])
        return " ".join(words)

    def _de_parts(self) -> tuple[str, str, list[str], str | None]:
        pps = []
        if self.with_np:
            pps.append(f"mit {self.with_np.de('dat')}")
        if self.place:
            pps.append(_in_dative(self.place))
        if self.kind == "exist":
            finite = "gab" if self.tense == "past" else "gibt"
            return "es", finite, [self.obj.de("acc")] + pps, None
        subj = _de_subject(self.subj)
        person = _subject_person(self.subj)
        if self.kind == "be":
            finite = (SEIN_PAST if self.tense == "past" else SEIN_PRESENT)[person]
            return subj, finite, pps + [self.adj.de], None
        objects = ([self.iobj.de("dat")] if self.iobj else []) + [self.obj.de("acc")]
        v = self.verb
        if self.tense == "present":
            return subj, v.de_present[person], objects + pps, None
        if self.tense == "past":
            return subj, HABEN[person], objects + pps, v.de_participle
        return subj, MODALS[self.tense][1][person], objects + pps, v.de_inf


def _in_dative(place: NP) -> str:
    """``in`` + dative, contracting ``in dem`` to ``im`` as German always does."""
    phrase = place.de("dat")
    return "im" + phrase[3:] if phrase.startswith("dem ") else f"in {phrase}"


@dataclass(frozen=True)
class MTSentence:
    """A main clause, optionally followed by "because ..." (weil) or preceded by "X says that" (dass)."""

    main: Clause
    because: Clause | None = None
    says: object = None  # Pronoun | NP that says "that ..."

    def en(self) -> str:
        if self.says is not None:
            says = "says" if _en_third_singular(self.says) else "say"
            text = f"{_en_subject(self.says)} {says} that {self.main.en()}"
        else:
            text = self.main.en()
        if self.because:
            text += f" because {self.because.en()}"
        return _cap(text) + "."

    def de(self) -> str:
        if self.says is not None:
            says = ("sage", "sagst", "sagt", "sagen", "sagt", "sagen")[_subject_person(self.says)]
            text = f"{_de_subject(self.says)} {says}, dass {self.main.de('sub')}"
        else:
            text = self.main.de("main")
        if self.because:
            text += f", weil {self.because.de('sub')}"
        return _cap(text) + "."


_STATIVE = frozenset({"need", "like"})
_SG_DETS = ("def", "def", "def", "indef", "indef", "this", "poss")
_PL_DETS = ("def", "def", "this", "poss", "num", "num", "bare", "some", "many")
_EXIST_SG_DETS = ("indef",)  # "there is a ..." takes no definite article
_EXIST_PL_DETS = ("num", "bare", "some", "many")


class _MTSampler:
    """Draws sentence plans; all randomness of synth-mt goes through ``self.rng``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def np(self, tags, *, singular_only: bool = False, existential: bool = False) -> NP:
        rng = self.rng
        noun = _pick(rng, [n for n in NOUNS if n.tags & frozenset(tags)])
        plural = not singular_only and rng.random() < 0.35
        if existential:
            det = _pick(rng, _EXIST_PL_DETS if plural else _EXIST_SG_DETS)
        else:
            det = _pick(rng, _PL_DETS if plural else _SG_DETS)
        if det == "poss":
            det = "poss:" + _pick(rng, tuple(POSSESSIVES))
        elif det == "num":
            det = f"num:{rng.randint(2, 12) if rng.random() < 0.8 else rng.randint(13, 99)}"
        adjs = [a for a in ADJECTIVES if a.tags & noun.tags]
        adj = _pick(rng, adjs) if rng.random() < 0.55 else None
        return NP(noun, det, plural, adj)

    def subject(self, tags):
        if "person" in tags and self.rng.random() < 0.3:
            return _pick(self.rng, PRONOUNS)
        return self.np(tags)

    def clause(self, *, subordinate: bool = False) -> Clause:
        """A clause plan. Subordinate clauses (after weil/dass) are shorter and never front the time."""
        rng = self.rng
        roll = rng.random()
        kind = "act" if roll < 0.7 else ("be" if roll < 0.88 or subordinate else "exist")
        tense = _pick(rng, ("present", "present", "past", "past", "want", "can"))
        if kind != "act" and tense in MODALS:
            tense = "present"
        times = TIMES["modal" if tense in MODALS else tense]
        time = _pick(rng, times) if rng.random() < (0.2 if subordinate else 0.45) else None
        front = time is not None and not subordinate and rng.random() < 0.4
        place = self.np(("place",), singular_only=True) if not subordinate and rng.random() < 0.3 else None
        if kind == "be":
            subj = self.subject(("person", "animal", "thing"))
            tags = {"person"} if isinstance(subj, Pronoun) else subj.noun.tags
            adj = _pick(rng, [a for a in ADJECTIVES if a.tags & tags])
            return Clause("be", tense, subj, adj=adj, place=place, time=time, front_time=front)
        if kind == "exist":
            obj = self.np(("thing", "animal"), existential=True)
            place = place or self.np(("place",), singular_only=True)
            return Clause("exist", tense, obj=obj, place=place, time=time, front_time=front)
        verb = _pick(rng, VERBS)
        if verb.en in _STATIVE and tense in MODALS:
            tense = "present"  # "can need", "wants to like" are not natural English
        subj = self.subject(verb.subj_tags)
        obj = self.np(verb.obj_tags)
        iobj = self.np(("person",)) if verb.ditransitive else None
        with_np = self.np(("person", "animal")) if not subordinate and not iobj and rng.random() < 0.2 else None
        return Clause("act", tense, subj, verb, obj, iobj, with_np=with_np, place=place, time=time,
                      front_time=front)

    def sentence(self) -> MTSentence:
        roll = self.rng.random()
        if roll < 0.15:
            return MTSentence(self.clause(subordinate=True), because=self.clause(subordinate=True))
        if roll < 0.27:
            return MTSentence(self.clause(subordinate=True), says=self.subject(("person",)))
        return MTSentence(self.clause())


def _make_mt(rng: random.Random) -> tuple[str, Row]:
    sentence = _MTSampler(rng).sentence()
    en, de = sentence.en(), sentence.de()
    return en, {"translation": {"de": de, "en": en}}


# ======================================================================================
# synth-gsm: multi-step arithmetic word problems with worked solutions
# ======================================================================================

def _eq(a: int, op: str, b: int) -> tuple[int, str]:
    """Result and text of one step; the text is what tests re-evaluate."""
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    if op == "/" and a % b:
        raise ValueError(f"{a} / {b} is not a whole number")
    if value < 0:
        raise ValueError("negative intermediate result")
    return value, f"{a} {op} {b} = {value}"


def _name(rng: random.Random) -> tuple[str, str, str]:
    """(name, subject pronoun, possessive)."""
    name, g = _pick(rng, PEOPLE)
    return (name, "he", "his") if g == "m" else (name, "she", "her")


# Each template draws numbers, returns (question, solution lines, answer) and raises ValueError for
# a draw that does not work out (a fraction, a negative count); _make_gsm then draws again.


def _gsm_shopping(rng):
    name, he, _ = _name(rng)
    items = ("pencils", "notebooks", "apples", "comics", "sticker packs", "cupcakes")
    i1s, i2s = rng.sample(items, 2)
    q1, p1, q2, p2 = rng.randint(2, 9), rng.randint(1, 9), rng.randint(2, 9), rng.randint(1, 9)
    c1, s1 = _eq(q1, "*", p1)
    c2, s2 = _eq(q2, "*", p2)
    total, s3 = _eq(c1, "+", c2)
    lines = [f"{name} spends {s1} dollars on {i1s}.", f"{_cap(he)} spends {s2} dollars on {i2s}.",
             f"In total {he} spends {s3} dollars."]
    question = (f"{name} buys {q1} {i1s} for ${p1} each and {q2} {i2s} for ${p2} each.")
    if rng.random() < 0.5:
        bill = next(b for b in (20, 50, 100, 200) if b > total)
        change, s4 = _eq(bill, "-", total)
        question += f" {_cap(he)} pays with a ${bill} bill. How much change does {he} get back?"
        lines.append(f"{_cap(he)} gets back {s4} dollars.")
        return question, lines, change
    return question + f" How much does {he} spend in total?", lines, total


def _gsm_baking(rng):
    name, he, _ = _name(rng)
    goods = _pick(rng, ("cookies", "muffins", "rolls", "pies"))
    per, batches, k = rng.randint(6, 24), rng.randint(2, 6), rng.randint(2, 8)
    made, s1 = _eq(per, "*", batches)
    packed = rng.randint(1, made // k) * k
    sold = made - packed
    question = f"{name} bakes {batches} batches of {goods} with {per} {goods} in each batch."
    lines = [f"{name} bakes {s1} {goods}."]
    if sold:
        rest, s2 = _eq(made, "-", sold)
        question += f" {_cap(he)} sells {sold} of them and packs the rest into boxes of {k}."
        lines.append(f"After selling {sold}, {he} has {s2} {goods} left.")
    else:
        rest = made
        question += f" {_cap(he)} packs all of them into boxes of {k}."
    n_boxes, s3 = _eq(rest, "/", k)
    lines.append(f"{_cap(he)} fills {s3} boxes.")
    return question + f" How many boxes does {he} fill?", lines, n_boxes


def _gsm_reading(rng):
    name, he, _ = _name(rng)
    a, m = rng.randint(5, 30), rng.randint(2, 4)
    word = {2: "twice", 3: "three times", 4: "four times"}[m]
    tuesday, s1 = _eq(a, "*", m)
    read, s2 = _eq(a, "+", tuesday)
    pages = read + rng.randint(5, 150)
    left, s3 = _eq(pages, "-", read)
    question = (f"A book has {pages} pages. {name} reads {a} pages on Monday and {word} as many pages on "
                f"Tuesday. How many pages does {he} still have to read?")
    lines = [f"On Tuesday {he} reads {s1} pages.", f"In the two days {he} reads {s2} pages.",
             f"{_cap(he)} still has {s3} pages to read."]
    return question, lines, left


def _gsm_savings(rng):
    name, he, his = _name(rng)
    a, w, g = rng.randint(3, 25), rng.randint(3, 12), rng.randint(5, 60)
    thing = _pick(rng, ("bike", "video game", "pair of shoes", "guitar", "tent"))
    saved, s1 = _eq(a, "*", w)
    total, s2 = _eq(saved, "+", g)
    cost = rng.randint(5, total)
    left, s3 = _eq(total, "-", cost)
    question = (f"{name} saves ${a} every week for {w} weeks. Then {he} gets ${g} for {his} birthday "
                f"and buys a {thing} for ${cost}. How much money does {he} have left?")
    lines = [f"{name} saves {s1} dollars.", f"With the birthday money {he} has {s2} dollars.",
             f"After buying the {thing} {he} has {s3} dollars left."]
    return question, lines, left


def _gsm_classes(rng):
    t, teams = rng.randint(2, 6), rng.randint(3, 20)
    c, s = rng.randint(2, 6), rng.randint(15, 30)
    total, s1 = _eq(c, "*", s)
    absent = total - teams * t
    if not 1 <= absent <= total // 3:
        raise ValueError("absent count out of range")
    present, s2 = _eq(total, "-", absent)
    n_teams, s3 = _eq(present, "/", t)
    question = (f"A school has {c} classes with {s} students in each class. On sports day {absent} students are "
                f"absent, and the others are put into teams of {t}. How many teams are there?")
    lines = [f"The school has {s1} students.", f"On sports day {s2} students are there.",
             f"They make {s3} teams."]
    return question, lines, n_teams


def _gsm_farm(rng):
    name, he, his = _name(rng)
    chickens, cows = rng.randint(3, 30), rng.randint(2, 15)
    question = f"{name} has {chickens} chickens and {cows} cows on {his} farm."
    lines = []
    if rng.random() < 0.4:
        sold = rng.randint(1, cows - 1)
        cows, s0 = _eq(cows, "-", sold)
        question += f" {_cap(he)} sells {sold} of the cows. How many legs do the animals left on the farm have?"
        lines.append(f"After selling some, {he} has {s0} cows.")
    else:
        question += " How many legs do the animals have in total?"
    c_legs, s1 = _eq(chickens, "*", 2)
    w_legs, s2 = _eq(cows, "*", 4)
    legs, s3 = _eq(c_legs, "+", w_legs)
    lines += [f"The chickens have {s1} legs.", f"The cows have {s2} legs.", f"Together they have {s3} legs."]
    return question, lines, legs


def _gsm_trip(rng):
    name, he, _ = _name(rng)
    v1, h1, v2, h2 = rng.randint(3, 9) * 10, rng.randint(2, 5), rng.randint(3, 9) * 10, rng.randint(1, 4)
    d1, s1 = _eq(v1, "*", h1)
    d2, s2 = _eq(v2, "*", h2)
    d, s3 = _eq(d1, "+", d2)
    question = (f"{name} drives at {v1} km per hour for {h1} hours and then at {v2} km per hour for {h2} hours.")
    lines = [f"First {he} drives {s1} km.", f"Then {he} drives {s2} km.", f"Altogether {he} drives {s3} km."]
    if rng.random() < 0.5:
        goal = d + rng.randint(1, 30) * 10
        rest, s4 = _eq(goal, "-", d)
        question += f" The trip is {goal} km long. How many more km does {he} have to drive?"
        lines.append(f"{_cap(he)} still has to drive {s4} km.")
        return question, lines, rest
    return question + f" How far does {he} drive?", lines, d


def _gsm_marbles(rng):
    name, he, _ = _name(rng)
    friend, _, _ = _name(rng)
    if friend == name:
        raise ValueError("the friend needs another name")
    thing = _pick(rng, ("marbles", "stickers", "cards", "shells"))
    a, b, c, d = rng.randint(20, 90), rng.randint(2, 19), rng.randint(2, 6), rng.randint(3, 12)
    left, s1 = _eq(a, "-", b)
    bought, s2 = _eq(c, "*", d)
    now, s3 = _eq(left, "+", bought)
    question = (f"{name} has {a} {thing}. {_cap(he)} gives {b} to {friend} and then buys {c} packs with {d} "
                f"{thing} in each pack. How many {thing} does {he} have now?")
    lines = [f"After giving some away {he} has {s1} {thing}.", f"{_cap(he)} buys {s2} {thing}.",
             f"Now {he} has {s3} {thing}."]
    return question, lines, now


def _gsm_fruit(rng):
    name, he, _ = _name(rng)
    fruit = _pick(rng, ("apples", "plums", "pears", "oranges"))
    k = rng.randint(2, 6)
    share = rng.randint(2, 12)
    eaten = rng.randint(1, 9)
    total = share * k + eaten
    a = rng.randint(1, total - 1)
    b = total - a
    picked, s1 = _eq(a, "+", b)
    rest, s2 = _eq(picked, "-", eaten)
    each, s3 = _eq(rest, "/", k)
    question = (f"{name} picks {a} {fruit} on Saturday and {b} {fruit} on Sunday. {_cap(he)} eats {eaten} of them "
                f"and shares the rest equally among {k} friends. How many {fruit} does each friend get?")
    lines = [f"{_cap(he)} picks {s1} {fruit}.", f"After eating some {he} has {s2} {fruit}.",
             f"Each friend gets {s3} {fruit}."]
    return question, lines, each


def _gsm_ages(rng):
    (a_name, _, _), (b_name, _, _) = _name(rng), _name(rng)
    if a_name == b_name:
        raise ValueError("the two children need different names")
    a, d, m = rng.randint(3, 15), rng.randint(2, 9), rng.randint(2, 3)
    b, s1 = _eq(a, "+", d)
    parent, s2 = _eq(b, "*", m)
    times = {2: "twice", 3: "three times"}[m]
    ab, s3 = _eq(a, "+", b)
    total, s4 = _eq(ab, "+", parent)
    question = (f"{a_name} is {a} years old. {b_name} is {d} years older than {a_name}. Their aunt is {times} as old "
                f"as {b_name}. What is the sum of their three ages?")
    lines = [f"{b_name} is {s1} years old.", f"The aunt is {s2} years old.",
             f"{a_name} and {b_name} together are {s3} years old.", f"The sum of the three ages is {s4}."]
    return question, lines, total


def _gsm_garden(rng):
    name, he, _ = _name(rng)
    rows_, per, t = rng.randint(2, 8), rng.randint(3, 9), rng.randint(2, 6)
    plants, s1 = _eq(rows_, "*", per)
    dead = rng.randint(1, plants - 1)
    alive, s2 = _eq(plants, "-", dead)
    tomatoes, s3 = _eq(alive, "*", t)
    question = (f"{name} plants {rows_} rows of tomato plants with {per} plants in each row. {dead} of the plants "
                f"die, and each of the others gives {t} tomatoes. How many tomatoes does {he} pick?")
    lines = [f"{_cap(he)} plants {s1} plants.", f"{s2} plants are still alive.",
             f"{_cap(he)} picks {s3} tomatoes."]
    return question, lines, tomatoes


def _gsm_wages(rng):
    name, he, _ = _name(rng)
    rate, hours, days = rng.randint(8, 20), rng.randint(2, 8), rng.randint(2, 6)
    day_pay, s1 = _eq(rate, "*", hours)
    week, s2 = _eq(day_pay, "*", days)
    spent = rng.randint(5, week - 1)
    left, s3 = _eq(week, "-", spent)
    question = (f"{name} earns ${rate} an hour and works {hours} hours a day for {days} days. {_cap(he)} spends "
                f"${spent} of the money on food. How much money does {he} have left?")
    lines = [f"Each day {he} earns {s1} dollars.", f"In {days} days {he} earns {s2} dollars.",
             f"After buying food {he} has {s3} dollars left."]
    return question, lines, left


_GSM_TEMPLATES = (_gsm_shopping, _gsm_baking, _gsm_reading, _gsm_savings, _gsm_classes, _gsm_farm,
                  _gsm_trip, _gsm_marbles, _gsm_fruit, _gsm_ages, _gsm_garden, _gsm_wages)


def gsm_solution(lines: list[str], answer: int) -> str:
    """GSM8K-style worked solution: one step per line, then the answer sentence and ``#### N``."""
    return "\n".join(lines + [f"The answer is {answer}.", f"#### {answer}"])


def _make_gsm(rng: random.Random) -> tuple[str, Row]:
    while True:
        template = _pick(rng, _GSM_TEMPLATES)
        try:
            question, lines, answer = template(rng)
        except ValueError:  # a draw that would need a fraction or a negative count: draw again
            continue
        return question, {"question": question, "answer": gsm_solution(lines, answer)}


# ======================================================================================
# Splits, caching, public API
# ======================================================================================

_GENERATORS: dict[str, tuple[int, Callable[[random.Random], tuple[str, Row]]]] = {
    "synth-sum": (SEED + 1, _make_sum),
    "synth-mt": (SEED + 2, _make_mt),
    "synth-gsm": (SEED + 3, _make_gsm),
}
TASK_NAMES = tuple(_GENERATORS)


@lru_cache(maxsize=None)
def _generate(task_name: str) -> dict[str, tuple[Row, ...]]:
    seed, make = _GENERATORS[task_name]
    rng = random.Random(seed)
    total = sum(SPLIT_SIZES.values())
    seen: set[str] = set()
    pool: list[Row] = []
    attempts = 0
    while len(pool) < total:
        attempts += 1
        if attempts > 50 * total:
            raise RuntimeError(f"{task_name}: generator cannot produce {total} distinct rows")
        key, row = make(rng)
        if key not in seen:
            seen.add(key)
            pool.append(row)
    splits: dict[str, tuple[Row, ...]] = {}
    start = 0
    for split in _DEAL_ORDER:
        size = SPLIT_SIZES[split]
        chunk = pool[start:start + size]
        start += size
        if task_name == "synth-sum":  # the xsum schema carries its own id column
            chunk = [dict(row, id=f"{split}-{i:05d}") for i, row in enumerate(chunk)]
        splits[split] = tuple(chunk)
    return splits


def rows(task_name: str, split: str) -> list[Row]:
    """The rows of one split of a bundled task, in the schema of its real counterpart.

    synth-sum -> {"document", "summary", "id"} (XSum); synth-mt -> {"translation": {"de", "en"}}
    (WMT14); synth-gsm -> {"question", "answer"} (GSM8K). Generated once per process and cached;
    each call returns fresh copies, so callers may modify them.
    """
    if task_name not in _GENERATORS:
        raise XKDError(f"{task_name!r} is not a bundled synthetic task: use one of {', '.join(TASK_NAMES)}")
    if split not in SPLIT_SIZES:
        raise XKDError(f"unknown split {split!r} for {task_name}: use one of {', '.join(SPLITS)}")
    return copy.deepcopy(list(_generate(task_name)[split]))
