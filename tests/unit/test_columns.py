import pytest

from mlflow_spark_tools.runs.columns import MAX_COLUMN_NAME, METRIC, PARAM, TAG, ColumnNamer, ColumnSpec


def test_names_are_lowercase_ascii_with_accents_dropped_and_other_scripts_as_code_points():
    namer = ColumnNamer()
    namer.assign([(PARAM, "a.b/c d-e"), (TAG, "mlflow.runName"), (METRIC, "précision"),
                  (PARAM, "λ_reg"), (METRIC, "学习率"), (METRIC, "Ünïcode")])
    assert namer.name(PARAM, "a.b/c d-e") == "_p_a_b_c_d_e"
    assert namer.name(TAG, "mlflow.runName") == "_t_mlflow_runname"
    assert namer.name(METRIC, "précision") == "_m_precision"
    assert namer.name(PARAM, "λ_reg") == "_p_u3bb_reg"
    assert namer.name(METRIC, "学习率") == "_m_u5b66u4e60u7387"
    assert namer.name(METRIC, "Ünïcode") == "_m_unicode"


def test_a_key_that_is_a_safe_name_keeps_it_whatever_the_order_and_the_others_are_listed():
    namer = ColumnNamer()
    namer.assign([(METRIC, "Test-RMSE"), (METRIC, "test_rmse"), (METRIC, "Test_RMSE")])
    assert namer.name(METRIC, "test_rmse") == "_m_test_rmse"
    assert namer.name(METRIC, "Test-RMSE") == "_m_test_rmse_2"  # then sorted: "Test-RMSE" < "Test_RMSE"
    assert namer.name(METRIC, "Test_RMSE") == "_m_test_rmse_3"
    assert namer.collisions == [
        "metric 'Test-RMSE' is _m_test_rmse_2: _m_test_rmse is metric 'test_rmse'",
        "metric 'Test_RMSE' is _m_test_rmse_3: _m_test_rmse is metric 'test_rmse'",
    ]


def test_the_same_keys_get_the_same_names_in_every_experiment():
    """``batch.size`` in one experiment and ``batch_size`` in another: whichever the other
    holds, ``batch_size`` is ``_p_batch_size`` where both are."""
    one, other = ColumnNamer(), ColumnNamer()
    one.assign([(PARAM, "batch.size"), (PARAM, "batch_size")])
    other.assign([(PARAM, "batch_size"), (PARAM, "batch.size")])
    assert one.name(PARAM, "batch_size") == other.name(PARAM, "batch_size") == "_p_batch_size"
    assert one.name(PARAM, "batch.size") == other.name(PARAM, "batch.size") == "_p_batch_size_2"
    alone = ColumnNamer()
    alone.assign([(PARAM, "batch.size")])
    assert alone.name(PARAM, "batch.size") == "_p_batch_size" and alone.collisions == []


def test_collisions_get_deterministic_suffixes_in_sorted_order():
    keys = [(PARAM, "a/b"), (PARAM, "a.b"), (PARAM, "A_B"), (PARAM, "a_b")]
    first, second = ColumnNamer(), ColumnNamer()
    first.assign(keys)
    second.assign(reversed(keys))
    names = {k: first.name(*k) for k in keys}
    assert names == {k: second.name(*k) for k in keys}
    # the safe name first, then sorted by key: "A_B" < "a.b" < "a/b"
    assert names[(PARAM, "a_b")] == "_p_a_b"
    assert names[(PARAM, "A_B")] == "_p_a_b_2"
    assert names[(PARAM, "a.b")] == "_p_a_b_3"
    assert names[(PARAM, "a/b")] == "_p_a_b_4"
    assert len({n.lower() for n in names.values()}) == 4


def test_names_given_before_are_kept_and_new_keys_avoid_them():
    existing = [ColumnSpec("_p_x_y", PARAM, "x/y", "string")]
    namer = ColumnNamer(existing)
    namer.assign([(PARAM, "x.y"), (PARAM, "x/y")])
    assert namer.name(PARAM, "x/y") == "_p_x_y"
    assert namer.name(PARAM, "x.y") == "_p_x_y_2"


def test_same_key_in_different_kinds_does_not_collide():
    namer = ColumnNamer()
    namer.assign([(PARAM, "lr"), (METRIC, "lr"), (TAG, "lr")])
    assert [namer.name(k, "lr") for k in (PARAM, METRIC, TAG)] == ["_p_lr", "_m_lr", "_t_lr"]


def test_info_column_names_are_reserved_case_insensitively():
    namer = ColumnNamer()
    namer.assign([(PARAM, "x")])
    assert namer.name(PARAM, "x") == "_p_x"


@pytest.mark.parametrize("n_keys", [1, 3])
def test_250_character_keys_stay_within_the_name_limit(n_keys):
    base = "k" * 249
    keys = [(PARAM, base + c) for c in ".:/"[:n_keys]]
    namer = ColumnNamer()
    namer.assign(keys)
    names = [namer.name(*k) for k in keys]
    assert all(len(n) <= MAX_COLUMN_NAME for n in names)
    assert len({n.lower() for n in names}) == n_keys
