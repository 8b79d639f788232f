import pyarrow as pa
import pytest

from mlflow_spark_tools.tables import param_types as pt


@pytest.mark.parametrize(
    "values, expected",
    [
        (["1", "-2", "300"], pt.BIGINT),
        (["1", "2.5"], pt.DOUBLE),
        (["1e-3", ".5", "5.", "NaN", "inf", "-Infinity"], pt.DOUBLE),
        (["true", "False", "TRUE"], pt.BOOLEAN),
        (["1", "true"], pt.STRING),
        (["+3"], pt.DOUBLE),
        (["007"], pt.BIGINT),
        (["9223372036854775808"], pt.DOUBLE),
        (["adam", "1"], pt.STRING),
        (["", "1"], pt.STRING),
        ([None, None], pt.STRING),
        ([None, "4"], pt.BIGINT),
        (["1 "], pt.STRING),
        (["0x10"], pt.STRING),
    ],
)
def test_infer(values, expected):
    assert pt.infer(pa.array(values, pa.string())) == expected


def test_fits_and_cast_keep_nulls():
    values = pa.array(["1", None, "3"], pa.string())
    assert pt.fits(values, pt.BIGINT)
    assert pt.cast(values, pt.BIGINT).to_pylist() == [1, None, 3]
    assert not pt.fits(pa.array(["1", "x"]), pt.BIGINT)
    assert pt.fits(pa.array(["anything"]), pt.STRING)
