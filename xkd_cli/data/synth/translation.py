"""``synth-mt``: English -> German on a controlled grammar with real German morphology: gender, case
(nominative/accusative/dative) and number agreement of articles, possessives and adjectives; verb-second
and verb-final word order (fronted time adverbs, perfect tense, modal verbs, subordinate clauses with
"weil"/"dass")."""

from __future__ import annotations

import random
from dataclasses import dataclass

from xkd_cli.data.synth.common import Row, cap, num_en, pick

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
            det = num_en(int(arg))
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
        return cap(text) + "."

    def de(self) -> str:
        if self.says is not None:
            says = ("sage", "sagst", "sagt", "sagen", "sagt", "sagen")[_subject_person(self.says)]
            text = f"{_de_subject(self.says)} {says}, dass {self.main.de('sub')}"
        else:
            text = self.main.de("main")
        if self.because:
            text += f", weil {self.because.de('sub')}"
        return cap(text) + "."


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
        noun = pick(rng, [n for n in NOUNS if n.tags & frozenset(tags)])
        plural = not singular_only and rng.random() < 0.35
        if existential:
            det = pick(rng, _EXIST_PL_DETS if plural else _EXIST_SG_DETS)
        else:
            det = pick(rng, _PL_DETS if plural else _SG_DETS)
        if det == "poss":
            det = "poss:" + pick(rng, tuple(POSSESSIVES))
        elif det == "num":
            det = f"num:{rng.randint(2, 12) if rng.random() < 0.8 else rng.randint(13, 99)}"
        adjs = [a for a in ADJECTIVES if a.tags & noun.tags]
        adj = pick(rng, adjs) if rng.random() < 0.55 else None
        return NP(noun, det, plural, adj)

    def subject(self, tags):
        if "person" in tags and self.rng.random() < 0.3:
            return pick(self.rng, PRONOUNS)
        return self.np(tags)

    def clause(self, *, subordinate: bool = False) -> Clause:
        """A clause plan. Subordinate clauses (after weil/dass) are shorter and never front the time."""
        rng = self.rng
        roll = rng.random()
        kind = "act" if roll < 0.7 else ("be" if roll < 0.88 or subordinate else "exist")
        tense = pick(rng, ("present", "present", "past", "past", "want", "can"))
        if kind != "act" and tense in MODALS:
            tense = "present"
        times = TIMES["modal" if tense in MODALS else tense]
        time = pick(rng, times) if rng.random() < (0.2 if subordinate else 0.45) else None
        front = time is not None and not subordinate and rng.random() < 0.4
        place = self.np(("place",), singular_only=True) if not subordinate and rng.random() < 0.3 else None
        if kind == "be":
            subj = self.subject(("person", "animal", "thing"))
            tags = {"person"} if isinstance(subj, Pronoun) else subj.noun.tags
            adj = pick(rng, [a for a in ADJECTIVES if a.tags & tags])
            return Clause("be", tense, subj, adj=adj, place=place, time=time, front_time=front)
        if kind == "exist":
            obj = self.np(("thing", "animal"), existential=True)
            place = place or self.np(("place",), singular_only=True)
            return Clause("exist", tense, obj=obj, place=place, time=time, front_time=front)
        verb = pick(rng, VERBS)
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


def make_mt(rng: random.Random) -> tuple[str, Row]:
    sentence = _MTSampler(rng).sentence()
    en, de = sentence.en(), sentence.de()
    return en, {"translation": {"de": de, "en": en}}
