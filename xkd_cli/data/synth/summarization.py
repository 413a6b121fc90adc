"""``synth-sum``: news paragraphs (one key event, supporting details, quotes and distractor sentences about
other places, people and numbers, in varied order) -> a one-sentence abstractive summary that recombines
facts from several sentences in new words, so copying the lead sentence is not enough."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from xkd_cli.data.synth.common import PEOPLE, Row, cap, num_en, pick

TOWNS = ("Swansea", "Dundee", "Leeds", "Bristol", "Belfast", "Cardiff", "Aberdeen", "Norwich",
         "Exeter", "Derry", "Inverness", "Wrexham", "Hull", "Preston", "Carlisle", "Bangor",
         "Stirling", "Plymouth", "Newport", "Lincoln", "Galway", "Falkirk", "Durham", "Ipswich")
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
        return self._fresh(lambda: (pick(self.rng, TOWNS), ""))[0]

    def person(self) -> tuple[str, str]:
        """(full name, gender "m"/"f")."""
        def make() -> tuple[str, str]:
            first, gender = pick(self.rng, PEOPLE)
            return f"{first} {pick(self.rng, SURNAMES)}", gender
        return self._fresh(make)

    def company(self) -> tuple[str, str]:
        """(company name, kind: a key of COMPANY_KINDS)."""
        def make() -> tuple[str, str]:
            kind = pick(self.rng, tuple(COMPANY_KINDS))
            return f"{pick(self.rng, COMPANY_STEMS)} {kind}", kind
        return self._fresh(make)

    def pick(self, seq):
        return pick(self.rng, seq)

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
    facts = (f"{cap(num_en(hurt))} people were taken to hospital with minor injuries.",)
    extras = (f"{cap(num_en(engines))} fire engines attended the scene.",
              r.pick(("The cause of the blaze is being investigated.",
                      "Police closed nearby roads for several hours.")))
    summary = (f"{cap(num_en(hurt))} people have been treated in hospital after a blaze at a {building} in {town}.",
               f"A {building} in {town} was badly damaged by fire, leaving {num_en(hurt)} people needing treatment.")[v]
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
    lead = (f"{cap(org)} has appointed {new} to the post of {role}.",
            f"{new}, who previously worked at {prev}, is to become the next {role} of {org}.")[v]
    facts = (f"{pron} replaces {old}, who stepped down in {r.pick(MONTHS)} after {years} years in charge.",)
    extras = (f"{pron} said it was \"an honour to be given this chance\".",
              f"The appointment follows a search lasting {num_en(r.randint(3, 11))} months.")
    summary = (f"{new} has been named the new {role} of {org}, succeeding {old}.",
               f"{cap(org)} has chosen former {prev} manager {new} to replace {old} as {role}.")[v]
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
            f"Residents in {town} are cleaning up after {num_en(days)} days of heavy rain.")[v]
    facts = ((f"About {homes} homes were flooded, the council said.",)
             if v == 0 else
             (f"The council said {homes} homes had been flooded when the River {river} rose.",))
    extras = (f"Several roads, including the {r.pick(ROADS)}, were closed.",
              "Forecasters have warned that more rain is expected later in the week.")
    summary = (f"Around {homes} homes in {town} have been flooded after the River {river} overflowed.",
               f"{cap(num_en(days))} days of rain have left {homes} homes under water in {town}.")[v]
    return _Story(lead, facts, extras, summary)


def _story_strike(r: _SumRng) -> _Story:
    workers = r.pick(("bus drivers", "nurses", "refuse collectors", "teachers", "rail staff", "postal workers"))
    reason = r.pick(("pay", "working hours", "job cuts", "pensions"))
    town, days, n = r.town(), r.randint(2, 5), r.randint(50, 900, 10)
    v = r.randint(0, 1)
    lead = (f"{cap(workers)} in {town} are to walk out for {num_en(days)} days in a dispute over {reason}.",
            f"Union members in {town} have voted for industrial action in a row over {reason}.")[v]
    facts = ((f"The action by {n} staff will begin on {r.pick(DAYS)}.",)
             if v == 0 else
             (f"The {n} {workers} will stop work for {num_en(days)} days from {r.pick(DAYS)}.",))
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
            f"A team from the University of {town} has spent {num_en(r.randint(2, 9))} years working on a new {thing}.")[v]
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


def make_sum(rng: random.Random) -> tuple[str, Row]:
    r = _SumRng(rng)
    story = pick(rng, _STORIES)(r)
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
