"""A Hypothesis state machine: random adds, deletes, upserts, k-NN and radius searches on a
`HammingIndex`, against a plain-Python model (id -> code, brute-force distances, ties by id),
saved (journaled), reopened (with a journal pending) and compacted at random points."""
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from schn.index import HammingIndex, list_searchers
from schn.index import store as store_mod

BITS = 10  # 1024 codes, a few dozen items: many ties at every distance
CODES = st.integers(0, (1 << BITS) - 1)


def packed(values) -> np.ndarray:
    """Codes as ints (bit 0 = MSB) packed the schn way."""
    bits = [[(v >> (BITS - 1 - j)) & 1 for j in range(BITS)] for v in values]
    return np.packbits(np.array(bits, dtype=np.uint8).reshape(len(values), BITS), axis=1)


def model_ranked(model: dict, query: int):
    return sorted((bin(code ^ query).count("1"), item) for item, code in model.items())


class IndexMachine(RuleBasedStateMachine):
    @initialize(kind=st.sampled_from(["int", "str"]), journaled=st.booleans(), small_limit=st.booleans())
    def start(self, kind, journaled, small_limit):
        # a small limit: saves compact on their own and the delta folds in memory (4 x limit)
        self.real_limit = store_mod.delta_limit
        if small_limit:
            store_mod.delta_limit = lambda n: 3
        self.kind = kind
        self.folder = Path(tempfile.mkdtemp(prefix="schn-prop-")) / "idx"
        self.model: dict = {}
        self.index = HammingIndex(BITS)
        self.index.add(packed([0]), ids=[self.key(0)])
        self.model[self.key(0)] = 0
        if journaled:  # saved and reopened: every later change goes to the delta and the journal
            self.index.save(self.folder)
            self.index = HammingIndex.open(self.folder)

    def teardown(self):
        store_mod.delta_limit = self.real_limit
        shutil.rmtree(self.folder.parent, ignore_errors=True)

    def key(self, n: int):
        return n if self.kind == "int" else f"i{n:03d}"  # string order differs from number order

    @rule(items=st.dictionaries(st.integers(0, 60), CODES, min_size=1, max_size=6))
    def add(self, items):
        new = {self.key(n): c for n, c in items.items() if self.key(n) not in self.model}
        if new:
            self.index.add(packed(list(new.values())), ids=list(new))
            self.model.update(new)

    @rule(items=st.dictionaries(st.integers(0, 60), CODES, min_size=1, max_size=6))
    def upsert(self, items):
        ids = [self.key(n) for n in items]
        replaced, added = self.index.upsert(packed(list(items.values())), ids=ids)
        assert replaced == sum(i in self.model for i in ids) and added == len(ids) - replaced
        self.model.update(dict(zip(ids, items.values())))

    @rule(numbers=st.lists(st.integers(0, 60), min_size=1, max_size=5, unique=True))
    def delete(self, numbers):
        ids = [self.key(n) for n in numbers]
        assert self.index.delete(ids, missing="ignore") == sum(i in self.model for i in ids)
        for i in ids:
            self.model.pop(i, None)

    @precondition(lambda self: self.index.path is not None)
    @rule(compact=st.booleans())
    def save_and_reopen(self, compact):
        self.index.save(compact=compact)
        self.index = HammingIndex.open(self.folder)

    @precondition(lambda self: self.index.path is None)
    @rule()
    def first_save(self):
        self.index.save(self.folder)  # a full save of a new index; then opened: journaled

    @rule(query=CODES, k=st.integers(1, 70), searcher=st.sampled_from(list_searchers()))
    def search(self, query, k, searcher):
        found = self.index.search(packed([query]), k, searcher=searcher)
        want = model_ranked(self.model, query)[:k]
        assert list(zip(found.distances[0].tolist(), found.ids[0].tolist())) == want
        assert self.index.ids_at(found.rows[0]).tolist() == [i for _, i in want]

    @rule(query=CODES, r=st.integers(0, BITS), searcher=st.sampled_from(list_searchers()))
    def radius(self, query, r, searcher):
        (found,) = self.index.radius_search(packed([query]), r, searcher=searcher)
        want = [(d, i) for d, i in model_ranked(self.model, query) if d <= r]
        assert list(zip(found.distances.tolist(), found.ids.tolist())) == want

    @invariant()
    def same_items(self):
        index = self.index
        assert len(index) == len(self.model)
        assert sorted(index.ids.tolist()) == sorted(self.model)
        if self.model:
            some = sorted(self.model)[: 5]
            assert np.array_equal(index.codes_of(some), packed([self.model[i] for i in some]))


IndexMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=30, deadline=None, derandomize=True)
test_index_matches_the_model = IndexMachine.TestCase
