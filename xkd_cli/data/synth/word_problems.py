"""``synth-gsm``: grade-school word problems with 2-4 arithmetic operations and a worked solution in GSM8K's
style, ending ``The answer is N.`` and ``#### N``."""

from __future__ import annotations

import random

from xkd_cli.data.synth.common import PEOPLE, Row, cap, pick


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
    name, g = pick(rng, PEOPLE)
    return (name, "he", "his") if g == "m" else (name, "she", "her")


# Each template draws numbers, returns (question, solution lines, answer) and raises ValueError for
# a draw that does not work out (a fraction, a negative count); make_gsm then draws again.


def _gsm_shopping(rng):
    name, he, _ = _name(rng)
    items = ("pencils", "notebooks", "apples", "comics", "sticker packs", "cupcakes")
    i1s, i2s = rng.sample(items, 2)
    q1, p1, q2, p2 = rng.randint(2, 9), rng.randint(1, 9), rng.randint(2, 9), rng.randint(1, 9)
    c1, s1 = _eq(q1, "*", p1)
    c2, s2 = _eq(q2, "*", p2)
    total, s3 = _eq(c1, "+", c2)
    lines = [f"{name} spends {s1} dollars on {i1s}.", f"{cap(he)} spends {s2} dollars on {i2s}.",
             f"In total {he} spends {s3} dollars."]
    question = (f"{name} buys {q1} {i1s} for ${p1} each and {q2} {i2s} for ${p2} each.")
    if rng.random() < 0.5:
        bill = next(b for b in (20, 50, 100, 200) if b > total)
        change, s4 = _eq(bill, "-", total)
        question += f" {cap(he)} pays with a ${bill} bill. How much change does {he} get back?"
        lines.append(f"{cap(he)} gets back {s4} dollars.")
        return question, lines, change
    return question + f" How much does {he} spend in total?", lines, total


def _gsm_baking(rng):
    name, he, _ = _name(rng)
    goods = pick(rng, ("cookies", "muffins", "rolls", "pies"))
    per, batches, k = rng.randint(6, 24), rng.randint(2, 6), rng.randint(2, 8)
    made, s1 = _eq(per, "*", batches)
    packed = rng.randint(1, made // k) * k
    sold = made - packed
    question = f"{name} bakes {batches} batches of {goods} with {per} {goods} in each batch."
    lines = [f"{name} bakes {s1} {goods}."]
    if sold:
        rest, s2 = _eq(made, "-", sold)
        question += f" {cap(he)} sells {sold} of them and packs the rest into boxes of {k}."
        lines.append(f"After selling {sold}, {he} has {s2} {goods} left.")
    else:
        rest = made
        question += f" {cap(he)} packs all of them into boxes of {k}."
    n_boxes, s3 = _eq(rest, "/", k)
    lines.append(f"{cap(he)} fills {s3} boxes.")
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
             f"{cap(he)} still has {s3} pages to read."]
    return question, lines, left


def _gsm_savings(rng):
    name, he, his = _name(rng)
    a, w, g = rng.randint(3, 25), rng.randint(3, 12), rng.randint(5, 60)
    thing = pick(rng, ("bike", "video game", "pair of shoes", "guitar", "tent"))
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
        question += f" {cap(he)} sells {sold} of the cows. How many legs do the animals left on the farm have?"
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
        lines.append(f"{cap(he)} still has to drive {s4} km.")
        return question, lines, rest
    return question + f" How far does {he} drive?", lines, d


def _gsm_marbles(rng):
    name, he, _ = _name(rng)
    friend, _, _ = _name(rng)
    if friend == name:
        raise ValueError("the friend needs another name")
    thing = pick(rng, ("marbles", "stickers", "cards", "shells"))
    a, b, c, d = rng.randint(20, 90), rng.randint(2, 19), rng.randint(2, 6), rng.randint(3, 12)
    left, s1 = _eq(a, "-", b)
    bought, s2 = _eq(c, "*", d)
    now, s3 = _eq(left, "+", bought)
    question = (f"{name} has {a} {thing}. {cap(he)} gives {b} to {friend} and then buys {c} packs with {d} "
                f"{thing} in each pack. How many {thing} does {he} have now?")
    lines = [f"After giving some away {he} has {s1} {thing}.", f"{cap(he)} buys {s2} {thing}.",
             f"Now {he} has {s3} {thing}."]
    return question, lines, now


def _gsm_fruit(rng):
    name, he, _ = _name(rng)
    fruit = pick(rng, ("apples", "plums", "pears", "oranges"))
    k = rng.randint(2, 6)
    share = rng.randint(2, 12)
    eaten = rng.randint(1, 9)
    total = share * k + eaten
    a = rng.randint(1, total - 1)
    b = total - a
    picked, s1 = _eq(a, "+", b)
    rest, s2 = _eq(picked, "-", eaten)
    each, s3 = _eq(rest, "/", k)
    question = (f"{name} picks {a} {fruit} on Saturday and {b} {fruit} on Sunday. {cap(he)} eats {eaten} of them "
                f"and shares the rest equally among {k} friends. How many {fruit} does each friend get?")
    lines = [f"{cap(he)} picks {s1} {fruit}.", f"After eating some {he} has {s2} {fruit}.",
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
    lines = [f"{cap(he)} plants {s1} plants.", f"{s2} plants are still alive.",
             f"{cap(he)} picks {s3} tomatoes."]
    return question, lines, tomatoes


def _gsm_wages(rng):
    name, he, _ = _name(rng)
    rate, hours, days = rng.randint(8, 20), rng.randint(2, 8), rng.randint(2, 6)
    day_pay, s1 = _eq(rate, "*", hours)
    week, s2 = _eq(day_pay, "*", days)
    spent = rng.randint(5, week - 1)
    left, s3 = _eq(week, "-", spent)
    question = (f"{name} earns ${rate} an hour and works {hours} hours a day for {days} days. {cap(he)} spends "
                f"${spent} of the money on food. How much money does {he} have left?")
    lines = [f"Each day {he} earns {s1} dollars.", f"In {days} days {he} earns {s2} dollars.",
             f"After buying food {he} has {s3} dollars left."]
    return question, lines, left


_GSM_TEMPLATES = (_gsm_shopping, _gsm_baking, _gsm_reading, _gsm_savings, _gsm_classes, _gsm_farm,
                  _gsm_trip, _gsm_marbles, _gsm_fruit, _gsm_ages, _gsm_garden, _gsm_wages)


def gsm_solution(lines: list[str], answer: int) -> str:
    """GSM8K-style worked solution: one step per line, then the answer sentence and ``#### N``."""
    return "\n".join(lines + [f"The answer is {answer}.", f"#### {answer}"])


def make_gsm(rng: random.Random) -> tuple[str, Row]:
    while True:
        template = pick(rng, _GSM_TEMPLATES)
        try:
            question, lines, answer = template(rng)
        except ValueError:  # a draw that would need a fraction or a negative count: draw again
            continue
        return question, {"question": question, "answer": gsm_solution(lines, answer)}
