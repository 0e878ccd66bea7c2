"""The corpus and the questions, offline: the corpus is the docstrings of standard-library modules (the
running Python's own), the questions ask which module does what.

    python -m examples.rag.data corpus > pydocs.jsonl     # the corpus as a JSONL file for the Files API
    python -m examples.rag.data trainset                  # [{"question", "answer"}, ...] as JSON
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

QUESTIONS = {
    "zipfile": "Which standard-library module reads and writes ZIP files?",
    "gzip": "Which module reads and writes gzipped files?",
    "csv": "Which module parses and writes CSV files?",
    "heapq": "Which module implements the heap queue, a priority queue algorithm?",
    "bisect": "Which module provides bisection algorithms for sorted lists?",
    "shutil": "Which module copies and archives files and whole directory trees?",
    "textwrap": "Which module wraps and fills paragraphs of text?",
    "difflib": "Which module helps compute deltas between sequences?",
    "fractions": "Which module gives infinite-precision rational numbers?",
    "uuid": "Which module makes universally unique identifiers (RFC 4122)?",
    "base64": "Which module does Base16, Base32, Base64 and Base85 data encodings?",
    "fnmatch": "Which module matches file names against shell patterns?",
    "secrets": "Which module generates cryptographically strong random tokens?",
    "pprint": "Which module pretty-prints lists, tuples and dictionaries?",
    "shlex": "Which module is a lexical analyzer for shell-like syntaxes?",
    "queue": "Which module gives a multi-producer, multi-consumer queue?",
    "copy": "Which module does shallow and deep copying of objects?",
    "pickle": "Which module creates portable serialized representations of Python objects?",
    "tarfile": "Which module reads and writes tar archives?",
    "mimetypes": "Which module guesses the MIME type of a file?",
    "ipaddress": "Which module manipulates IPv4 and IPv6 addresses?",
    "colorsys": "Which module converts between RGB and other color systems?",
    "timeit": "Which module measures the execution time of small code snippets?",
    "dis": "Which module disassembles Python byte code?",
}
OTHERS = ["json", "sqlite3", "statistics", "hashlib", "hmac", "random", "calendar", "sched", "weakref", "lzma"]


def corpus() -> list[dict[str, Any]]:
    """One document per module: ``{"id": name, "text": "name: <its docstring's first paragraph>"}``."""
    docs = []
    for name in [*QUESTIONS, *OTHERS]:
        doc = (importlib.import_module(name).__doc__ or "").strip().split("\n\n")[0]
        docs.append({"id": name, "text": f"{name}: {' '.join(doc.split())}"})
    return docs


def rows() -> list[dict[str, str]]:
    return [{"question": question, "answer": name} for name, question in QUESTIONS.items()]


def trainset() -> list[dict[str, str]]:
    return rows()[:16]


def devset() -> list[dict[str, str]]:
    return rows()[16:]


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "corpus"
    if what == "corpus":
        print("\n".join(json.dumps(doc) for doc in corpus()))
    else:
        print(json.dumps({"trainset": trainset, "devset": devset}[what]()))
