"""Recipe choice for the mini backbone looks at validation items only."""

from __future__ import annotations

import numpy as np
import pytest

from icg.data.splits import split_items
from icg.evaluation.mini import SPLIT, held_out_rows
from icg.evaluation.mini_select import main, validation_rows


def test_validation_rows_are_held_out_and_never_test_items() -> None:
    rows = validation_rows(1682)
    test = split_items(1682, SPLIT["seed"], SPLIT["val_fraction"], SPLIT["test_fraction"]).test
    assert len(rows) == 168 and np.all(np.diff(rows) > 0)
    assert set(rows) <= set(held_out_rows(1682)) and not set(rows) & set(test)


def test_candidate_needs_a_name_and_a_folder() -> None:
    with pytest.raises(SystemExit):
        main(["--candidate", "no-equals-sign"])
