"""--parts parsing and archive URLs of the NIH table."""

from __future__ import annotations

import pytest

from cxr_tools.data.download.nih import ARCHIVES, archive_name, archive_url, parse_parts
from cxr_tools.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,3-5", (1, 3, 4, 5)),
        ("5-3,1", None),
        ("12", (12,)),
        ("2, 2 ,1-2", (1, 2)),
        ("", tuple(range(1, 13))),
        ("all", tuple(range(1, 13))),
        ((3, 1), (1, 3)),
    ],
)
def test_parse_parts(text, expected):
    if expected is None:
        with pytest.raises(ConfigError, match="Reversed range"):
            parse_parts(text)
    else:
        assert parse_parts(text) == expected


@pytest.mark.parametrize("bad", ["0", "13", "1-13", "a", "1,,2", "1;2", "-3", "3-"])
def test_parse_parts_rejects_bad_input(bad):
    with pytest.raises(ConfigError):
        parse_parts(bad)


def test_table_has_twelve_distinct_parts_with_md5s():
    assert sorted(ARCHIVES) == list(range(1, 13))
    assert len({i for i, _ in ARCHIVES.values()}) == 12
    assert all(len(m) == 32 and int(m, 16) >= 0 for _, m in ARCHIVES.values())
    assert ARCHIVES[1] == ("vfk49d74nhbxq3nqjg0900w5nvkorp5c", "fe8ed0a6961412fddcbb3603c11b3698")
    assert ARCHIVES[12] == ("ioqwiy20ihqwyr8pf4c24eazhh281pbu", "dc9fda1757c2de0032b63347a7d2895c")


def test_archive_urls():
    assert archive_name(3) == "images_003.tar.gz"
    assert archive_url(1, None) == "https://nihcc.box.com/shared/static/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz"
    assert archive_url(3, "http://mirror/nih/") == "http://mirror/nih/images_003.tar.gz"
    assert archive_url(3, "http://m/{part}/{name}?id={id}") == (
        "http://m/003/images_003.tar.gz?id=f1t00wrtdk94satdfb9olcolqx20z2jp"
    )
    with pytest.raises(ConfigError, match="template"):
        archive_url(3, "http://m/{nope}")
