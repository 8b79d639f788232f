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


def test_the_key_of_more_runs_gets_the_name_without_a_suffix():
    namer = ColumnNamer()
    namer.assign([(METRIC, "Val_Loss"), (METRIC, "val.loss")],
                 runs={(METRIC, "Val_Loss"): 20, (METRIC, "val.loss"): 195})
    assert namer.name(METRIC, "val.loss") == "_m_val_loss"
    assert namer.name(METRIC, "Val_Loss") == "_m_val_loss_2"


def test_collisions_get_deterministic_suffixes_in_sorted_order():
    keys = [(PARAM, "a/b"), (PARAM, "a.b"), (PARAM, "A_B"), (PARAM, "a_b")]
    first, second = ColumnNamer(), ColumnNamer()
    first.assign(keys)
    second.assign(reversed(keys))
    names = {k: first.name(*k) for k in keys}
    assert names == {k: second.name(*k) for k in keys}
    # sorted by key: "A_B" < "a.b" < "a/b" < "a_b"
    assert names[(PARAM, "A_B")] == "_p_a_b"
    assert names[(PARAM, "a.b")] == "_p_a_b_2"
    assert names[(PARAM, "a/b")] == "_p_a_b_3"
    assert names[(PARAM, "a_b")] == "_p_a_b_4"
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
