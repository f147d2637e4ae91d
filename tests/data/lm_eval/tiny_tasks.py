"""Datasets of archlab's local lm-eval test tasks, built in memory (no download)."""

from datasets import Dataset, DatasetDict

MC = [
    {"question": "def add(a, b):\n    return a", "choices": [" + b", " - b", " * b"], "label": 0},
    {"question": "import os\nprint(os.", "choices": ["path", "xyzzy"], "label": 0},
    {"question": "for i in range(10):\n   ", "choices": [" pass", "!!"], "label": 0},
    {"question": "class Foo", "choices": [":", "(object):", " ="], "label": 1},
]
TEXTS = [{"text": "def main():\n    return 0\n"}, {"text": "x = [i * i for i in range(3)]\n" * 3}]


def mc(**kwargs) -> DatasetDict:
    return DatasetDict({"test": Dataset.from_list(MC)})


def text(**kwargs) -> DatasetDict:
    return DatasetDict({"test": Dataset.from_list(TEXTS)})
