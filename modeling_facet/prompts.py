"""Label vocabulary and natural-language prompts for FACET-VLM.

The labels of every benchmark (the six basic expressions plus neutral, the five 4DME micro-expression classes and
the FACS action units of BP4D) map to the words that fill the prompt templates. Evaluation averages every template
of a class ([`class_prompts`]); training draws one augmented prompt per sample ([`sample_prompt`]): a random
template, a random synonym and, when the dataset knows them, the subject's gender, age and ethnicity
("a joyful expression of a young woman"). Labels outside the vocabulary ("contempt", "joy") are used verbatim,
which is what makes zero-shot label sets possible.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np


# The six basic expressions: FacetVLMConfig's default id2label and the class order of every benchmark builder.
EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
# Canonical class names of the expression benchmarks.
EXPRESSIONS = EMOTIONS + ("neutral",)
# The five emotion classes of the 4DME micro-expression database.
MICRO_EXPRESSIONS = ("positive", "negative", "surprise", "repression", "others")

# FACS action units (Ekman & Friesen); the names are the standard FACS descriptions.
FACS_ACTION_UNITS = {
    1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 5: "upper lid raiser", 6: "cheek raiser",
    7: "lid tightener", 8: "lips toward each other", 9: "nose wrinkler", 10: "upper lip raiser",
    11: "nasolabial deepener", 12: "lip corner puller", 13: "sharp lip puller", 14: "dimpler",
    15: "lip corner depressor", 16: "lower lip depressor", 17: "chin raiser", 18: "lip pucker", 19: "tongue show",
    20: "lip stretcher", 21: "neck tightener", 22: "lip funneler", 23: "lip tightener", 24: "lip pressor",
    25: "lips part", 26: "jaw drop", 27: "mouth stretch", 28: "lip suck", 29: "jaw thrust", 30: "jaw sideways",
    31: "jaw clencher", 32: "lip bite", 33: "cheek blow", 34: "cheek puff", 35: "cheek suck", 36: "tongue bulge",
    37: "lip wipe", 38: "nostril dilator", 39: "nostril compressor", 41: "lid droop", 42: "slit", 43: "eyes closed",
    44: "squint", 45: "blink", 46: "wink",
}  # fmt: skip
# The 12 action units annotated in BP4D-Spontaneous.
BP4D_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
BP4D_ACTION_UNITS = tuple(f"AU{number}" for number in BP4D_AUS)

# Words per class; the first one is the canonical adjective ("a person looking happy").
SYNONYMS = {
    "anger": ("angry", "furious", "irritated", "mad", "annoyed", "enraged", "cross", "hostile"),
    "disgust": ("disgusted", "repulsed", "revolted", "sickened", "nauseated", "appalled", "grossed out"),
    "fear": ("afraid", "scared", "frightened", "fearful", "terrified", "anxious", "alarmed", "panicked"),
    "happiness": ("happy", "joyful", "smiling", "cheerful", "delighted", "glad", "pleased", "content"),
    "sadness": ("sad", "unhappy", "sorrowful", "gloomy", "downcast", "miserable", "dejected", "tearful"),
    "surprise": ("surprised", "astonished", "amazed", "startled", "shocked", "stunned", "astounded"),
    "neutral": ("neutral", "expressionless", "calm", "relaxed", "blank", "impassive", "composed"),
    "positive": ("positive", "pleasant", "upbeat", "good-humoured"),
    "negative": ("negative", "unpleasant", "displeased", "upset"),
    "repression": ("repressed", "suppressed", "restrained", "guarded"),
    "others": ("ambiguous", "unclear", "mixed", "indistinct"),
    **{f"AU{number}": (name,) for number, name in FACS_ACTION_UNITS.items()},
}

# Other spellings of the class names: BU-3DFE / BU-4DFE expression codes and the canonical adjectives themselves.
# The remaining synonyms are deliberately not aliases, so a zero-shot label such as "joyful" stays "joyful".
_ALIASES = {
    "an": "anger", "di": "disgust", "fe": "fear", "ha": "happiness", "sa": "sadness", "su": "surprise", "ne": "neutral",
    "other": "others",
    **{words[0]: name for name, words in SYNONYMS.items() if not name.startswith("AU")},
    **{name: f"AU{number}" for number, name in FACS_ACTION_UNITS.items()},
}  # fmt: skip
_ACTION_UNIT = re.compile(r"au\s*0*(\d+)")

EXPRESSION_TEMPLATES = (
    "a 3D face with a {} expression",
    "a person looking {}",
    "a scan of a {} face",
    "a photo of a {} person",
    "a face that looks {}",
    "a 3D scan of someone who is {}",
    "the facial expression of a {} person",
    "a rendered face showing a {} expression",
    "a depth map of a {} face",
    "a close-up of a {} face",
)
ACTION_UNIT_TEMPLATES = (
    "a face with the {} action",
    "a 3D face showing the {} action unit",
    "a scan of a face with the {} movement",
    "a facial expression with the {} action",
    "the {} action on a 3D face",
    "a rendered face showing the {} action",
    "a face where the {} is visible",
    "a 3D scan of a face with the {} action unit",
)
# Metadata-aware templates: `{}` is the expression word, `{person}` the subject ("young East Asian woman").
METADATA_TEMPLATES = (
    "a {} expression of a {person}",
    "a {} {person}",
    "a 3D face of a {person} looking {}",
    "a {person} with a {} expression",
    "a scan of a {} {person}",
    "the face of a {} {person}",
)

GENDER_NOUNS = {"female": ("woman", "female"), "male": ("man", "male")}
_GENDER_ALIASES = {"f": "female", "female": "female", "woman": "female", "m": "male", "male": "male", "man": "male"}
# BU-3DFE / BU-4DFE race codes.
ETHNICITY_WORDS = {
    "wh": "White", "bl": "Black", "ae": "East Asian", "am": "Middle Eastern", "in": "Indian", "la": "Hispanic",
}  # fmt: skip
# Upper bounds (exclusive) of the age bands, in years.
AGE_BANDS = ((30, "young"), (55, "middle-aged"), (float("inf"), "older"))

_ARTICLE = re.compile(r"\b([Aa]n?) (?=(\w[\w-]*))")
_CONSONANT_SOUND_PREFIXES = ("eu", "uni", "use", "one")


def canonical_label(label: str) -> str | None:
    """The vocabulary's class name for `label` ("happiness", "AU12", "others"), or None for an unknown label.

    Accepts the class names, the canonical adjectives ("happy"), BU-3DFE codes ("HA"), action units written as
    "AU12", "au 12" or by their FACS name ("lip corner puller"), case-insensitively.
    """
    key = str(label).strip().lower()
    if key in SYNONYMS:
        return key
    match = _ACTION_UNIT.fullmatch(key)
    if match and int(match.group(1)) in FACS_ACTION_UNITS:
        return f"AU{int(match.group(1))}"
    return _ALIASES.get(key)


def is_action_unit(label: str) -> bool:
    """True when `label` names a FACS action unit."""
    name = canonical_label(label)
    return name is not None and name.startswith("AU")


def label_synonyms(label: str) -> tuple:
    """The words that can stand for `label` in a prompt, canonical adjective first; `(label,)` if unknown."""
    name = canonical_label(label)
    return SYNONYMS[name] if name is not None else (str(label),)


def _allowed_words(label: str, exclude: Sequence) -> list:
    """The words of `label` (canonical first) that are not in `exclude` (case-insensitive); raises if none is left."""
    excluded = {str(word).strip().lower() for word in exclude}
    words = [word for word in label_synonyms(label) if word.lower() not in excluded]
    if not words:
        raise ValueError(f"Every word for label {label!r} is excluded ({label_synonyms(label)}); keep at least one.")
    return words


def label_word(label: str, exclude: Sequence = ()) -> str:
    """The canonical prompt word of `label` ("happiness" -> "happy", "AU12" -> "lip corner puller"), or its first
    synonym not in `exclude`; an unknown label is returned unchanged.

    Raises:
        ValueError: every word of the label is excluded.
    """
    return _allowed_words(label, exclude)[0]


def default_templates(labels, expression_templates=EXPRESSION_TEMPLATES, action_unit_templates=ACTION_UNIT_TEMPLATES):
    """`action_unit_templates` when every label is an action unit, else `expression_templates`."""
    labels = list(labels)
    return action_unit_templates if labels and all(map(is_action_unit, labels)) else expression_templates


def check_templates(templates) -> tuple:
    """Returns `templates` as a tuple after checking that each holds exactly one `{}` field."""
    if isinstance(templates, str):
        templates = (templates,)
    templates = tuple(templates)
    if not templates:
        raise ValueError("At least one prompt template is needed.")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1 or re.search(r"[{}]", template.replace("{}", "")):
            raise ValueError(f"Prompt template {template!r} must contain exactly one '{{}}' field and no other.")
    return templates


def fix_articles(text: str) -> str:
    """Chooses "a" or "an" before each following word ("a angry man" -> "an angry man")."""

    def replace(match):
        word = match.group(2).lower()
        vowel = word[0] in "aeiou" and not word.startswith(_CONSONANT_SOUND_PREFIXES)
        article = "an" if vowel else "a"
        return (article.capitalize() if match.group(1)[0].isupper() else article) + " "

    return _ARTICLE.sub(replace, text)


def class_prompts(labels, templates=None, exclude: Sequence = ()) -> list:
    """The C x K prompts of C class labels under K templates (default: [`default_templates`]); evaluation averages
    the K prompt embeddings of each class into its prototype. A label whose canonical word is in `exclude` is named
    by its first synonym that is not."""
    labels = [labels] if isinstance(labels, str) else list(labels)
    if not labels:
        raise ValueError("class_prompts needs at least one label.")
    templates = check_templates(default_templates(labels) if templates is None else templates)
    return [[label_prompt(label, template, exclude) for template in templates] for label in labels]


def _label_list(label) -> list:
    """A label or a sequence of labels (multi-label) as a list; no label at all reads as a neutral face."""
    return [label] if isinstance(label, str) else list(label) or ["neutral"]


def _join_words(words) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def label_prompt(label, template: str, exclude: Sequence = ()) -> str:
    """The canonical prompt of `label` (a class name, or a sequence of them joined with "and") under `template`,
    with the words of [`label_word`]."""
    words = [label_word(name, exclude) for name in _label_list(label)]
    return fix_articles(check_templates(template)[0].format(_join_words(words)))


def _age_word(age) -> str | None:
    """An age band word for an age in years (a number or a numeric string); other strings pass through."""
    try:
        years = float(age)
    except (TypeError, ValueError):
        return str(age).strip() or None
    return next(word for limit, word in AGE_BANDS if years < limit)


def subject_phrase(metadata: Mapping | None, rng: np.random.Generator | None = None) -> str | None:
    """Words for the subject from metadata with keys `gender` (or `sex`), `age` (years or words) and `ethnicity`
    (or `race`, BU race codes such as "AE" are spelled out): "young East Asian woman". None when nothing is known.
    `rng` picks among equivalent nouns ("woman" / "female"); without it the first is used."""
    if not metadata:
        return None
    gender = metadata.get("gender", metadata.get("sex"))
    age = metadata.get("age")
    ethnicity = metadata.get("ethnicity", metadata.get("race"))
    adjectives = []
    if age is not None:
        adjectives.append(_age_word(age))
    if ethnicity is not None:
        ethnicity = str(ethnicity).strip()
        adjectives.append(ETHNICITY_WORDS.get(ethnicity.lower(), ethnicity))
    noun = "person"
    if gender is not None:
        gender = str(gender).strip()
        key = _GENDER_ALIASES.get(gender.lower())
        if key is None:
            adjectives.append(gender)
        else:
            nouns = GENDER_NOUNS[key]
            noun = nouns[int(rng.integers(len(nouns)))] if rng is not None else nouns[0]
    adjectives = [word for word in adjectives if word]
    if not adjectives and noun == "person":
        return None
    return " ".join(adjectives + [noun])


def sample_prompt(
    label,
    rng: np.random.Generator,
    metadata: Mapping | None = None,
    exclude: Sequence = (),
    templates=None,
    metadata_probability: float = 0.5,
) -> str:
    """One augmented training prompt for `label`: a random template, a random synonym not in `exclude`, and with
    probability `metadata_probability` a metadata-aware template naming the subject (see [`subject_phrase`]).

    `label` is a class name or, for multi-label samples, a sequence of them (their words are joined with "and";
    an empty sequence reads as a neutral face). Action units use the action-unit templates and no metadata.
    Deterministic for a given `np.random.Generator` state.

    Raises:
        ValueError: every word of a label is excluded, or a template is malformed.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    labels = _label_list(label)
    words = []
    for name in labels:
        candidates = _allowed_words(name, exclude)
        words.append(candidates[int(rng.integers(len(candidates)))])
    word = _join_words(words)
    action_units = all(map(is_action_unit, labels))
    person = None if action_units else subject_phrase(metadata, rng)
    if person is not None and rng.random() < metadata_probability:
        template = METADATA_TEMPLATES[int(rng.integers(len(METADATA_TEMPLATES)))]
        return fix_articles(template.format(word, person=person))
    templates = check_templates(default_templates(labels) if templates is None else templates)
    return fix_articles(templates[int(rng.integers(len(templates)))].format(word))


def prompt_corpus() -> list:
    """Every prompt the vocabulary can produce without metadata, plus metadata phrases: the text a tokenizer for
    the FACET-VLM text tower is trained on."""
    corpus = []
    for name, words in SYNONYMS.items():
        templates = ACTION_UNIT_TEMPLATES if name.startswith("AU") else EXPRESSION_TEMPLATES
        corpus.extend(fix_articles(template.format(word)) for word in words for template in templates)
    people = [
        " ".join(filter(None, (age, ethnicity, noun)))
        for age in (None,) + tuple(word for _, word in AGE_BANDS)
        for ethnicity in (None,) + tuple(ETHNICITY_WORDS.values())
        for noun in ("person",) + tuple(noun for nouns in GENDER_NOUNS.values() for noun in nouns)
    ]
    expressions = [words[0] for name, words in SYNONYMS.items() if not name.startswith("AU")]
    for index, person in enumerate(people):
        template = METADATA_TEMPLATES[index % len(METADATA_TEMPLATES)]
        corpus.extend(fix_articles(template.format(word, person=person)) for word in expressions)
    return corpus


__all__ = [
    "ACTION_UNIT_TEMPLATES",
    "BP4D_ACTION_UNITS",
    "BP4D_AUS",
    "EMOTIONS",
    "EXPRESSIONS",
    "EXPRESSION_TEMPLATES",
    "FACS_ACTION_UNITS",
    "METADATA_TEMPLATES",
    "MICRO_EXPRESSIONS",
    "SYNONYMS",
    "canonical_label",
    "check_templates",
    "class_prompts",
    "default_templates",
    "fix_articles",
    "is_action_unit",
    "label_prompt",
    "label_synonyms",
    "label_word",
    "prompt_corpus",
    "sample_prompt",
    "subject_phrase",
]
