"""The explorer renders without exceptions (Streamlit AppTest, no browser)."""
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app" / "explorer.py")


def test_first_page_renders():
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    assert len(at.dataframe) == 2  # predictions of model A and model B


def test_empty_text_is_a_message_not_a_traceback():
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.text_area[0].set_value("   ").run()
    assert not at.exception
    assert any("Enter some text" in w.value for w in at.warning)
