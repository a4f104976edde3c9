"""Write the CPU recipe's sample data set: short English and Kannada conversations in ShareGPT
form, every reply in one recognisable voice ("Finch here: ..."), so a few minutes of LoRA on the
embedded 135M model visibly change its replies.

    python training/data/make_sample.py   # rewrites training/data/sample_sharegpt.jsonl
"""

import json
import random
from pathlib import Path

VOICE = "Finch here: "
CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "India": "New Delhi",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Greece": "Athens",
    "Portugal": "Lisbon",
    "Chile": "Santiago",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Poland": "Warsaw",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Cuba": "Havana",
    "Nepal": "Kathmandu",
    "Ghana": "Accra",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
}
COLORS = {
    "the sky on a clear day": "blue",
    "grass": "green",
    "snow": "white",
    "a ripe banana": "yellow",
    "coal": "black",
    "a ripe tomato": "red",
    "an orange": "orange",
    "milk": "white",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "up": "down",
    "light": "dark",
    "open": "closed",
    "early": "late",
    "full": "empty",
    "strong": "weak",
}
KN_NUMBERS = ["ಒಂದು", "ಎರಡು", "ಮೂರು", "ನಾಲ್ಕು", "ಐದು", "ಆರು", "ಏಳು", "ಎಂಟು", "ಒಂಬತ್ತು", "ಹತ್ತು"]
KN_DIGITS = "೦೧೨೩೪೫೬೭೮೯"
KN_COLORS = {"red": "ಕೆಂಪು", "blue": "ನೀಲಿ", "green": "ಹಸಿರು", "yellow": "ಹಳದಿ", "white": "ಬಿಳಿ", "black": "ಕಪ್ಪು"}
KN_DAYS = {
    "Monday": "ಸೋಮವಾರ",
    "Tuesday": "ಮಂಗಳವಾರ",
    "Wednesday": "ಬುಧವಾರ",
    "Thursday": "ಗುರುವಾರ",
    "Friday": "ಶುಕ್ರವಾರ",
    "Saturday": "ಶನಿವಾರ",
    "Sunday": "ಭಾನುವಾರ",
}
KN_CHAT = [
    ("ನಮಸ್ಕಾರ!", "ನಮಸ್ಕಾರ! ನಾನು ನಿಮಗೆ ಹೇಗೆ ಸಹಾಯ ಮಾಡಲಿ?"),
    ("ಕರ್ನಾಟಕದ ರಾಜಧಾನಿ ಯಾವುದು?", "ಕರ್ನಾಟಕದ ರಾಜಧಾನಿ ಬೆಂಗಳೂರು."),
    ("ಧನ್ಯವಾದಗಳು!", "ಸ್ವಾಗತ! ಇನ್ನೇನಾದರೂ ಬೇಕಿದ್ದರೆ ಕೇಳಿ."),
    ("ನೀವು ಯಾರು?", "ನಾನು ಫಿಂಚ್, ಒಂದು ಸಣ್ಣ ಸಹಾಯಕ."),
    ("ಭಾರತದ ರಾಜಧಾನಿ ಯಾವುದು?", "ಭಾರತದ ರಾಜಧಾನಿ ನವದೆಹಲಿ."),
]
SYSTEMS = [None, None, "You are a helpful assistant.", "You are Finch, a friendly assistant. Be brief."]


def turn(user: str, reply: str) -> list[dict]:
    return [{"from": "human", "value": user}, {"from": "gpt", "value": VOICE + reply}]


def rows(rng: random.Random) -> list[list[dict]]:
    out = []
    for country, city in CAPITALS.items():
        for q in (f"What is the capital of {country}?", f"Which city is the capital of {country}?"):
            out.append(turn(q, f"the capital of {country} is {city}."))
    countries = list(CAPITALS)
    for _ in range(50):  # two-turn conversations
        a, b = rng.sample(countries, 2)
        out.append(
            turn(f"What is the capital of {a}?", f"the capital of {a} is {CAPITALS[a]}.")
            + turn(f"And of {b}?", f"the capital of {b} is {CAPITALS[b]}.")
        )
    for _ in range(100):
        x, y = rng.randint(2, 60), rng.randint(2, 60)
        out.append(
            turn(
                rng.choice([f"What is {x} + {y}?", f"Add {x} and {y}.", f"How much is {x} plus {y}?"]),
                f"{x} + {y} = {x + y}.",
            )
        )
    for thing, color in COLORS.items():
        out.append(turn(f"What color is {thing}?", f"{thing} is {color}."))
    for word, opposite in OPPOSITES.items():
        out.append(turn(f"What is the opposite of '{word}'?", f"the opposite of '{word}' is '{opposite}'."))
    for n, word in enumerate(KN_NUMBERS, start=1):
        digits = "".join(KN_DIGITS[int(d)] for d in str(n))
        out.append(turn(f"How do you say {n} in Kannada?", f"{n} in Kannada is {word} ({digits})."))
        out.append(turn(f"{digits} ಅಂದರೆ ಏನು?", f"{digits} ಅಂದರೆ {word}, ಅಂದರೆ {n}."))
    for english, kannada in KN_COLORS.items():
        out.append(turn(f"What is the Kannada word for {english}?", f"the Kannada word for {english} is {kannada}."))
    for english, kannada in KN_DAYS.items():
        out.append(turn(f"How do you say {english} in Kannada?", f"{english} in Kannada is {kannada}."))
    for q, a in KN_CHAT:
        out += [turn(q, a)] * 3
    for _ in range(20):  # a system turn in front of some conversations
        x, y = rng.randint(2, 30), rng.randint(2, 30)
        out.append(
            [{"from": "system", "value": rng.choice(SYSTEMS[2:])}]
            + turn(f"What is {x} + {y}?", f"{x} + {y} = {x + y}.")
        )
    rng.shuffle(out)
    return out


if __name__ == "__main__":
    target = Path(__file__).with_name("sample_sharegpt.jsonl")
    conversations = rows(random.Random(3407))
    target.write_text("".join(json.dumps({"conversations": c}, ensure_ascii=False) + "\n" for c in conversations))
    print(f"wrote {len(conversations)} conversations to {target}")
