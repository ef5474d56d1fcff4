"""The generator's world: product types, attributes and their words in English, German and Arabic.

Each type has a canonical name per language and an English synonym phrase. Listings mostly use the
canonical words; some descriptions use the synonyms, so a model can learn them from the catalog,
and lexical-gap queries ask with synonyms or another language's words.
"""

from __future__ import annotations

LANGS = ("en", "de", "ar")
LOCALE_OF = {"us": "en_US", "de": "de_DE", "ae": "ar_AE"}  # the generator's locales; language and marketplace follow from the tag

# type -> (product_line, {lang: name}, english synonym, attribute names)
# fmt: off
TYPES: dict[str, tuple[str, dict[str, str], str, tuple[str, ...]]] = {
    "running_shoes": ("softlines", {"en": "running shoes", "de": "Laufschuhe", "ar": "حذاء جري"}, "jogging sneakers", ("colour", "size", "material")),
    "t_shirt": ("softlines", {"en": "t-shirt", "de": "T-Shirt", "ar": "قميص"}, "crew tee", ("colour", "clothing_size", "material")),
    "jacket": ("softlines", {"en": "jacket", "de": "Jacke", "ar": "سترة"}, "outdoor coat", ("colour", "clothing_size", "material")),
    "socks": ("softlines", {"en": "socks", "de": "Socken", "ar": "جوارب"}, "ankle hosiery", ("colour", "pack_count", "material")),
    "water_bottle": ("hardlines", {"en": "water bottle", "de": "Trinkflasche", "ar": "زجاجة ماء"}, "drinking flask", ("colour", "capacity", "material")),
    "backpack": ("hardlines", {"en": "backpack", "de": "Rucksack", "ar": "حقيبة ظهر"}, "daypack bag", ("colour", "capacity", "material")),
    "headphones": ("hardlines", {"en": "headphones", "de": "Kopfhörer", "ar": "سماعات"}, "wireless earbuds", ("colour", "connectivity")),
    "phone_case": ("hardlines", {"en": "phone case", "de": "Handyhülle", "ar": "غطاء هاتف"}, "mobile cover", ("colour", "phone_model", "material")),
    "charger": ("hardlines", {"en": "charger", "de": "Ladegerät", "ar": "شاحن"}, "power adapter", ("power", "connectivity")),
    "desk_lamp": ("hardlines", {"en": "desk lamp", "de": "Schreibtischlampe", "ar": "مصباح مكتب"}, "reading light", ("colour", "power", "length")),
    "coffee_beans": ("consumables", {"en": "coffee beans", "de": "Kaffeebohnen", "ar": "حبوب قهوة"}, "espresso roast", ("weight", "roast", "pack_count")),
    "shampoo": ("consumables", {"en": "shampoo", "de": "Shampoo", "ar": "شامبو"}, "hair wash", ("volume", "scent", "pack_count")),
    "vitamins": ("consumables", {"en": "vitamin tablets", "de": "Vitamintabletten", "ar": "فيتامينات"}, "dietary supplement", ("pack_count", "weight")),
    "dog_food": ("consumables", {"en": "dog food", "de": "Hundefutter", "ar": "طعام كلاب"}, "canine kibble", ("weight", "flavour")),
    "novel": ("media", {"en": "novel", "de": "Roman", "ar": "رواية"}, "fiction book", ("genre", "format")),
    "cookbook": ("media", {"en": "cookbook", "de": "Kochbuch", "ar": "كتاب طبخ"}, "recipe collection", ("cuisine", "format")),
    "board_game": ("media", {"en": "board game", "de": "Brettspiel", "ar": "لعبة لوحية"}, "tabletop strategy", ("players", "age")),
}
# fmt: on

COMPLEMENTS = {
    "running_shoes": "socks",
    "socks": "running_shoes",
    "t_shirt": "jacket",
    "jacket": "t_shirt",
    "water_bottle": "backpack",
    "backpack": "water_bottle",
    "headphones": "charger",
    "charger": "phone_case",
    "phone_case": "charger",
    "desk_lamp": "novel",
    "coffee_beans": "water_bottle",
    "shampoo": "vitamins",
    "vitamins": "shampoo",
    "dog_food": "water_bottle",
    "novel": "desk_lamp",
    "cookbook": "coffee_beans",
    "board_game": "novel",
}

# canonical value -> {lang: word}; the English synonym lives under "syn".
WORDS: dict[str, dict[str, str]] = {
    "red": {"en": "red", "de": "rot", "ar": "أحمر", "syn": "scarlet"},
    "blue": {"en": "blue", "de": "blau", "ar": "أزرق", "syn": "navy"},
    "black": {"en": "black", "de": "schwarz", "ar": "أسود", "syn": "ebony"},
    "white": {"en": "white", "de": "weiß", "ar": "أبيض", "syn": "ivory"},
    "green": {"en": "green", "de": "grün", "ar": "أخضر", "syn": "olive"},
    "grey": {"en": "grey", "de": "grau", "ar": "رمادي", "syn": "charcoal"},
    "cotton": {"en": "cotton", "de": "Baumwolle", "ar": "قطن", "syn": "natural fibre"},
    "polyester": {"en": "polyester", "de": "Polyester", "ar": "بوليستر", "syn": "synthetic fibre"},
    "steel": {"en": "stainless steel", "de": "Edelstahl", "ar": "فولاذ", "syn": "metal"},
    "plastic": {"en": "plastic", "de": "Kunststoff", "ar": "بلاستيك", "syn": "bpa free"},
    "leather": {"en": "leather", "de": "Leder", "ar": "جلد", "syn": "hide"},
    "bluetooth": {"en": "bluetooth", "de": "Bluetooth", "ar": "بلوتوث", "syn": "cordless"},
    "usb_c": {"en": "usb-c", "de": "USB-C", "ar": "يو إس بي سي", "syn": "type c"},
    "wired": {"en": "wired", "de": "kabelgebunden", "ar": "سلكي", "syn": "corded"},
    "light": {"en": "light roast", "de": "helle Röstung", "ar": "تحميص خفيف", "syn": "blonde"},
    "dark": {"en": "dark roast", "de": "dunkle Röstung", "ar": "تحميص داكن", "syn": "bold"},
    "lavender": {"en": "lavender", "de": "Lavendel", "ar": "خزامى", "syn": "floral"},
    "citrus": {"en": "citrus", "de": "Zitrus", "ar": "حمضيات", "syn": "lemon fresh"},
    "chicken": {"en": "chicken", "de": "Huhn", "ar": "دجاج", "syn": "poultry"},
    "beef": {"en": "beef", "de": "Rind", "ar": "لحم بقري", "syn": "steak"},
    "crime": {"en": "crime", "de": "Krimi", "ar": "جريمة", "syn": "detective"},
    "fantasy": {"en": "fantasy", "de": "Fantasy", "ar": "خيال", "syn": "dragons"},
    "romance": {"en": "romance", "de": "Liebesroman", "ar": "رومانسية", "syn": "love story"},
    "italian": {"en": "italian", "de": "italienisch", "ar": "إيطالي", "syn": "pasta"},
    "vegan": {"en": "vegan", "de": "vegan", "ar": "نباتي", "syn": "plant based"},
    "hardcover": {"en": "hardcover", "de": "gebunden", "ar": "غلاف مقوى", "syn": "hardback"},
    "paperback": {"en": "paperback", "de": "Taschenbuch", "ar": "غلاف ورقي", "syn": "softcover"},
}

CHOICES: dict[str, list[str]] = {
    "colour": ["red", "blue", "black", "white", "green", "grey"],
    "size": [str(s) for s in range(38, 47)],
    "clothing_size": ["S", "M", "L", "XL"],
    "material": ["cotton", "polyester", "steel", "plastic", "leather"],
    "pack_count": ["1", "2", "3", "6", "12"],
    "capacity": ["0.5", "0.75", "1", "1.5", "20", "30"],  # litres
    "connectivity": ["bluetooth", "usb_c", "wired"],
    "phone_model": ["Pixel 8", "Galaxy S24", "iPhone 15"],
    "power": ["20", "30", "65"],  # watts
    "length": ["30", "45", "60"],  # cm
    "weight": ["250", "500", "1000"],  # grams
    "roast": ["light", "dark"],
    "volume": ["250", "400", "500"],  # ml
    "scent": ["lavender", "citrus"],
    "flavour": ["chicken", "beef"],
    "genre": ["crime", "fantasy", "romance"],
    "cuisine": ["italian", "vegan"],
    "format": ["hardcover", "paperback"],
    "players": ["2", "2-4", "2-6"],
    "age": ["8", "12", "16"],
}
MATERIALS_OF = {
    "running_shoes": ["polyester", "leather"],
    "t_shirt": ["cotton", "polyester"],
    "jacket": ["polyester", "leather", "cotton"],
    "socks": ["cotton", "polyester"],
    "water_bottle": ["steel", "plastic"],
    "backpack": ["polyester", "leather"],
    "phone_case": ["plastic", "leather"],
}
KEY_ATTRIBUTES = ("colour", "size", "clothing_size", "capacity", "weight", "volume", "pack_count", "phone_model", "format", "genre")

ATTR_NAMES = {  # localized attribute names for text (the structured keys stay canonical)
    "colour": {"en": "colour", "de": "Farbe", "ar": "اللون"},
    "size": {"en": "size", "de": "Größe", "ar": "المقاس"},
    "clothing_size": {"en": "size", "de": "Größe", "ar": "المقاس"},
    "material": {"en": "material", "de": "Material", "ar": "الخامة"},
    "pack_count": {"en": "pack of", "de": "Packung mit", "ar": "عبوة من"},
    "capacity": {"en": "capacity", "de": "Fassungsvermögen", "ar": "السعة"},
}

SELLER_PHRASES = {
    "en": ["Top quality", "Best seller", "New", "Official", "Premium", "Great value"],
    "de": ["Top Qualität", "Bestseller", "Neu", "Original", "Premium", "Preis-Leistung"],
    "ar": ["جودة عالية", "الأكثر مبيعا", "جديد", "أصلي", "فاخر", "قيمة ممتازة"],
}
DESC_TEMPLATES = {
    "en": [
        "A {t} made for every day.",
        "This {t} is built to last.",
        "Our {t} combines comfort and value.",
        "The {t} you will reach for again and again.",
    ],
    "de": [
        "{t} für jeden Tag.",
        "Diese {t} sind langlebig gebaut.",
        "Unsere {t} vereinen Komfort und Wert.",
        "{t}, die Sie immer wieder nutzen werden.",
    ],
    "ar": ["{t} مصمم للاستخدام اليومي.", "هذا {t} مصنوع ليدوم.", "{t} يجمع بين الراحة والقيمة.", "{t} ستستخدمه مرارا وتكرارا."],
}
SYLLABLES = ["ka", "lo", "mi", "ra", "to", "ve", "zu", "no", "pi", "sa", "de", "fo", "gu", "hi", "ju", "be", "co", "xa"]


def word(value: str, lang: str) -> str:
    """A canonical attribute value in a language (numbers and codes pass through; English where the vocabulary lacks the language)."""
    w = WORDS.get(value)
    return w.get(lang, w["en"]) if w else value


def canonical_value(name: str, text: str) -> str:
    """Inverse of `format_value` for structured attributes: localized text -> canonical value."""
    for canon, words in WORDS.items():
        if text in (words["en"], words["de"], words["ar"]):
            return canon
    if name not in ("capacity", "weight", "volume", "power", "length"):
        return text
    number, _, unit = text.partition(" ")
    x = float(number.replace(",", "."))
    x = {"inch": x * 2.54, "kg": x * 1000, "ml": x / 1000 if name == "capacity" else x}.get(unit, x)
    if name == "capacity":
        return f"{x:g}"
    return str(int(round(x)))


def format_value(name: str, value: str, lang: str) -> str:
    """Canonical value -> the listing's localized text with units and number format."""
    unit = {"capacity": "l", "weight": "g", "volume": "ml", "power": "W", "length": "cm"}.get(name)
    if unit is None:
        return word(value, lang)
    v = value.replace(".", ",") if lang == "de" else value
    return f"{v} {unit}"
