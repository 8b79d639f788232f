"""The report's JavaScript libraries come from a cache only when nobody else could have written it:
a report runs that script in the browser of whoever opens it."""

from __future__ import annotations

import os
import stat

import pytest

from mlflow_spark_tools.reports import vega_libraries

# the report's extra; the oldest-stack venv, which runs these unit tests too, does not install it
pytest.importorskip("vl_convert")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(vega_libraries.CACHE_ENV, str(folder))
    return folder


def cached_file(folder):
    (path,) = folder.glob("vega-libraries-*.js")
    return path


def test_the_bundle_is_cached_privately_and_read_back(cache):
    bundle = vega_libraries.javascript_libraries()
    assert "vegaEmbed" in bundle and len(bundle) > 100_000
    path = cached_file(cache)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert path.read_text() == bundle
    path.write_text("/* from the cache */")
    assert vega_libraries.javascript_libraries() == "/* from the cache */"


@pytest.mark.parametrize("tamper", ["file writable by others", "file is a link", "folder writable by others"])
def test_a_cache_others_could_write_is_not_used(cache, tmp_path, tamper):
    real = vega_libraries.javascript_libraries()
    path = cached_file(cache)
    planted = "document.body.setAttribute('data-pwned', '1')"
    if tamper == "file writable by others":
        path.write_text(planted)
        os.chmod(path, 0o666)
    elif tamper == "file is a link":
        elsewhere = tmp_path / "elsewhere.js"
        elsewhere.write_text(planted)
        path.unlink()
        path.symlink_to(elsewhere)
    else:
        path.write_text(planted)
        os.chmod(cache, 0o777)
    assert vega_libraries.javascript_libraries() == real
    if tamper == "folder writable by others":
        assert path.read_text() == planted  # and nothing is written into such a folder


@pytest.fixture
def swap_on_open():
    """An audit hook that, once armed, runs a swap just before the first open of a path whose
    name is the cached bundle's: the moment between a check and a read."""
    import sys

    armed: dict = {}

    def hook(event, args):
        if event == "open" and armed.get("swap") and str(args[0]).endswith(".js"):
            swap = armed.pop("swap")
            swap()

    sys.addaudithook(hook)  # hooks cannot be removed: disarmed when the test ends
    yield armed
    armed.clear()


def test_a_folder_swapped_between_the_check_and_the_read_is_not_read(cache, tmp_path, swap_on_open):
    """Whoever can write the cache folder's parent renames the checked folder away and puts a
    folder of theirs (writable by others) with a planted bundle in its place, after the check."""
    real = vega_libraries.javascript_libraries()
    name = cached_file(cache).name
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / name).write_text("document.body.setAttribute('data-pwned', '1')")
    os.chmod(theirs, 0o777)

    def swap():
        cache.rename(tmp_path / "moved")
        theirs.rename(cache)

    swap_on_open["swap"] = swap
    assert vega_libraries.javascript_libraries() == real
    assert "swap" not in swap_on_open  # the swap happened, at the read
