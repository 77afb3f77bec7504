"""Built-in natural-language task families: facts, arithmetic, copying, induction, sequences, word relations."""
from __future__ import annotations

import random

from interventions.families import FAMILIES, Item

# Common nouns, each one token with its leading space (the framework drops draws where one is not).
NOUNS = (
    "apple", "river", "stone", "table", "chair", "horse", "cloud", "bread", "glass", "paper", "plant", "money",
    "music", "water", "light", "house", "shirt", "train", "phone", "clock", "beach", "grass", "snake", "tiger",
    "lemon", "piano", "truck", "bottle", "garden", "window", "doctor", "coffee", "forest", "island", "rabbit",
    "castle", "pencil", "rocket", "violin", "mirror", "camera", "bridge", "bucket", "candle", "carpet", "cookie",
    "dog", "cat", "sun", "moon", "car", "box", "hat", "pen", "cup", "bed", "fish", "bird", "tree", "book", "door",
    "milk", "ship", "king", "ring", "lamp", "rain", "snow", "fire", "gold", "sand", "wolf", "bear", "frog", "duck",
)


def _few_shot(rng: random.Random, header: str, pairs, shot: str = "{} -> {}\n", k: int = 2) -> Item:
    """A `k`-shot item over (x, y) `pairs`: header, k filled `shot`s, then the query `shot` cut before its
    ' {}' answer slot ('header\\nx -> y\\n...\\nq ->'); the corrupt prompt swaps the query."""
    shots = rng.sample(pairs, k + 2)
    (q, a), (cq, ca) = shots[-2], shots[-1]
    head = header + "".join(shot.format(x, y) for x, y in shots[:k])
    ask = shot.rsplit(" {}", 1)[0]
    return Item(head + ask.format(q), f" {a}", f" {ca}", head + ask.format(cq))


# --- factual_recall --------------------------------------------------------------------------
CAPITALS = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"), ("England", "London"), ("Greece", "Athens"),
    ("Canada", "Ottawa"), ("Ireland", "Dublin"), ("Portugal", "Lisbon"), ("Austria", "Vienna"),
    ("Poland", "Warsaw"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Hungary", "Budapest"), ("Turkey", "Ankara"), ("Thailand", "Bangkok"),
    ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Chile", "Santiago"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"), ("Korea", "Seoul"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"), ("Scotland", "Edinburgh"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"),
    ("Afghanistan", "Kabul"), ("Pakistan", "Islamabad"), ("Ukraine", "Kyiv"), ("Australia", "Canberra"),
)
LANGUAGES = (
    ("France", "French"), ("Germany", "German"), ("Spain", "Spanish"), ("Italy", "Italian"),
    ("Japan", "Japanese"), ("China", "Chinese"), ("Russia", "Russian"),
    ("Greece", "Greek"), ("Turkey", "Turkish"), ("Poland", "Polish"), ("Sweden", "Swedish"),
    ("Netherlands", "Dutch"), ("Korea", "Korean"), ("Egypt", "Arabic"), ("Israel", "Hebrew"),
    ("Thailand", "Thai"), ("Vietnam", "Vietnamese"), ("Norway", "Norwegian"),
    ("Finland", "Finnish"), ("Denmark", "Danish"), ("Hungary", "Hungarian"), ("England", "English"),
)
FACTS = (("The capital of {} is", CAPITALS), ("The language of {} is", LANGUAGES))


@FAMILIES.register("factual_recall")
def factual_recall(rng: random.Random) -> Item:
    """'The capital of France is Paris. The capital of Japan is' -> ' Tokyo'; corrupt swaps the country."""
    template, table = rng.choice(FACTS)
    (s1, o1), (q, a), (cq, ca) = rng.sample(table, 3)
    head = template.format(s1) + f" {o1}. "
    return Item(head + template.format(q), f" {a}", f" {ca}", head + template.format(cq))


# --- arithmetic ------------------------------------------------------------------------------
SUMS = tuple((a, b) for a in range(1, 9) for b in range(1, 9) if a + b <= 9)  # operands 1-8, answer <= 9


@FAMILIES.register("arithmetic")
def arithmetic(rng: random.Random) -> Item:
    """'2 + 5 = 7\\n4 + 1 = 5\\n3 + 3 = ' -> '6' (single-digit sums, bare digit after '= ');
    corrupt changes the second operand."""
    head = "".join(f"{a} + {b} = {a + b}\n" for a, b in rng.sample(SUMS, 2))
    a, b = rng.choice(SUMS)
    b2 = rng.choice([x for x in range(1, 10 - a) if x != b] or [b])
    return Item(f"{head}{a} + {b} = ", str(a + b), str(a + b2), f"{head}{a} + {b2} = ")


# --- copying and induction -------------------------------------------------------------------
@FAMILIES.register("copying")
def copying(rng: random.Random) -> Item:
    """'sun cat box -> sun cat box\\nred map pen -> red map' -> ' pen'; corrupt swaps the source word to copy."""
    n = rng.randint(3, 5)
    words = rng.sample(NOUNS, 2 * n + 1)
    demo, src, other = words[:n], words[n:2 * n], words[-1]
    k = rng.randrange(n)
    bad = src[:k] + [other] + src[k + 1:]
    head = f"{' '.join(demo)} -> {' '.join(demo)}\n"
    tail = "".join(f" {w}" for w in src[:k])
    return Item(f"{head}{' '.join(src)} ->{tail}", f" {src[k]}", f" {other}", f"{head}{' '.join(bad)} ->{tail}")


NAMES = (
    "John", "Mary", "James", "Anna", "Peter", "Lucy", "David", "Emma", "Paul", "Sarah", "Mark", "Alice", "Tom",
    "Kate", "Jack", "Laura", "Sam", "Helen", "Max", "Rose", "Adam", "Emily", "Ben", "Sophie", "Carl", "Julia",
)


@FAMILIES.register("induction")
def induction(rng: random.Random) -> Item:
    """A random word list, then its start again: 'lamp, gold, fish, sun,\\nlamp, gold,' -> ' fish';
    corrupt replaces the first occurrence of the answer with another word."""
    pool = rng.choice((NOUNS, NAMES))
    n = rng.randint(5, 8)
    words = rng.sample(pool, n + 1)
    seq, other = words[:n], words[n]
    k = rng.randint(1, n - 1)
    bad = seq[:k] + [other] + seq[k + 1:]
    text = lambda s: ", ".join(s) + ",\n" + ", ".join(s[:k]) + ","  # noqa: E731
    return Item(text(seq), f" {seq[k]}", f" {other}", text(bad))


# --- sequence_continuation -------------------------------------------------------------------
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
CYCLES = (  # (sequence, wraps around)
    (DAYS, True), (MONTHS, True), (tuple(d[:3] for d in DAYS), True), (tuple(m[:3] for m in MONTHS), True),
    (NUMBER_WORDS, False), (ORDINALS, False), (LETTERS, False), (tuple(x.lower() for x in LETTERS), False),
)


@FAMILIES.register("sequence_continuation")
def sequence_continuation(rng: random.Random) -> Item:
    """'Sequence: Monday, Tuesday, Wednesday,' -> ' Thursday' (days, months, number words, letters, digits
    with a step: 'Sequence: 1, 3, 5, ' -> '7'). Corrupt is a run of the same kind from another start: every
    element shifts, since a run's successor is only defined when the whole run agrees."""
    if rng.random() < 0.25:
        step = rng.randint(1, 2)
        n = rng.randint(3, 5 if step == 1 else 4)
        s, s2 = rng.sample([s for s in range(10) if s + n * step <= 9], 2)
        digits = lambda s: "Sequence: " + ", ".join(str(s + i * step) for i in range(n)) + ", "  # noqa: E731
        return Item(digits(s), str(s + n * step), str(s2 + n * step), digits(s2))
    n = rng.randint(3, 6)
    seq, wrap = rng.choice(CYCLES)
    s, s2 = rng.sample(range(len(seq) if wrap else len(seq) - n), 2)
    run = lambda s: [seq[(s + i) % len(seq)] for i in range(n + 1)]  # noqa: E731
    words = lambda s: "Sequence: " + ", ".join(run(s)[:n]) + ","  # noqa: E731
    return Item(words(s), f" {run(s)[n]}", f" {run(s2)[n]}", words(s2))


# --- word relations --------------------------------------------------------------------------
ANTONYMS = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("good", "bad"), ("happy", "sad"),
    ("old", "new"), ("high", "low"), ("light", "dark"), ("open", "closed"), ("rich", "poor"), ("hard", "soft"),
    ("long", "short"), ("early", "late"), ("full", "empty"), ("strong", "weak"), ("wet", "dry"), ("in", "out"),
    ("true", "false"), ("day", "night"), ("left", "right"), ("win", "lose"), ("love", "hate"), ("buy", "sell"),
    ("push", "pull"), ("top", "bottom"), ("black", "white"), ("begin", "end"), ("first", "last"),
    ("loud", "quiet"), ("clean", "dirty"), ("thick", "thin"), ("war", "peace"), ("friend", "enemy"),
    ("alive", "dead"), ("always", "never"), ("before", "after"), ("inside", "outside"), ("north", "south"),
    ("east", "west"), ("yes", "no"), ("cheap", "expensive"), ("safe", "dangerous"), ("near", "far"),
    ("wide", "narrow"), ("sweet", "sour"), ("easy", "difficult"), ("give", "take"), ("come", "go"),
    ("summer", "winter"), ("boy", "girl"), ("king", "queen"), ("question", "answer"), ("sit", "stand"),
)
PAIRS_BOTH_WAYS = ANTONYMS + tuple((b, a) for a, b in ANTONYMS)


@FAMILIES.register("antonyms")
def antonyms(rng: random.Random) -> Item:
    """'The opposite of hot is cold. The opposite of big is small. The opposite of up is' -> ' down';
    corrupt swaps the query word."""
    return _few_shot(rng, "", PAIRS_BOTH_WAYS, "The opposite of {} is {}. ")


PLURALS = (
    ("cat", "cats"), ("dog", "dogs"), ("car", "cars"), ("book", "books"), ("tree", "trees"), ("bird", "birds"),
    ("house", "houses"), ("box", "boxes"), ("church", "churches"), ("city", "cities"), ("baby", "babies"),
    ("man", "men"), ("woman", "women"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"),
    ("mouse", "mice"), ("knife", "knives"), ("leaf", "leaves"), ("wife", "wives"), ("party", "parties"),
    ("story", "stories"), ("hand", "hands"), ("road", "roads"), ("girl", "girls"), ("boy", "boys"),
    ("star", "stars"), ("friend", "friends"), ("table", "tables"), ("horse", "horses"), ("river", "rivers"),
)
PAST = (
    ("walk", "walked"), ("play", "played"), ("jump", "jumped"), ("talk", "talked"), ("open", "opened"),
    ("call", "called"), ("start", "started"), ("want", "wanted"), ("go", "went"), ("see", "saw"),
    ("eat", "ate"), ("run", "ran"), ("take", "took"), ("give", "gave"), ("write", "wrote"), ("speak", "spoke"),
    ("sing", "sang"), ("drink", "drank"), ("swim", "swam"), ("buy", "bought"), ("think", "thought"),
    ("bring", "brought"), ("teach", "taught"), ("catch", "caught"), ("find", "found"), ("make", "made"),
    ("come", "came"), ("know", "knew"), ("fly", "flew"), ("drive", "drove"), ("sleep", "slept"),
    ("leave", "left"), ("feel", "felt"), ("keep", "kept"), ("tell", "told"), ("sell", "sold"),
)


@FAMILIES.register("morphology")
def morphology(rng: random.Random) -> Item:
    """Plural or past tense: 'Plural:\\ncat -> cats\\nbox -> boxes\\nman ->' -> ' men'."""
    header, pairs = rng.choice((("Plural:\n", PLURALS), ("Past tense:\n", PAST)))
    return _few_shot(rng, header, pairs)


CAPITALIZABLE = NOUNS + (
    "paris", "london", "monday", "friday", "january", "march", "english", "french", "john", "mary", "james",
    "apple", "google", "happy", "blue", "green", "red", "small", "open", "river", "summer", "winter", "music",
    "water", "science", "history", "world", "city", "school", "family", "ocean", "mountain", "forest",
)
CAPITALIZED = tuple((w, w.capitalize()) for w in dict.fromkeys(CAPITALIZABLE))  # NOUNS repeat a few words


@FAMILIES.register("capitalization")
def capitalization(rng: random.Random) -> Item:
    """'Capitalize:\\ndog -> Dog\\ncat -> Cat\\nsun ->' -> ' Sun'; corrupt swaps the query word."""
    return _few_shot(rng, "Capitalize:\n", CAPITALIZED)
