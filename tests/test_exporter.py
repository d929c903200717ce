"""Exporter: exposition text from the newest tick (pure; the HTTP side is covered end to end)."""

import math

from agent.core.metrics import MetricSpec, Sample
from agent.engine.store import ABSENT_NAN, Store
from agent.serve.exporter import Exporter, format_value


def test_render_families_escaping_and_staleness():
    store = Store(60, 1)
    exp = Exporter()
    exp.register([MetricSpec("a_total", "counter", "A counter.\nSecond line.", ("x",))])
    exp.register([MetricSpec("hidden", "gauge", "Not exported.")], export=False)
    store.begin_tick(1)
    store.add([Sample("a_total", (("x", 'q"\\\n'),), 3.0), Sample("hidden", (), 1.0),
               Sample("gone", (), 1.0), Sample("b", (), ABSENT_NAN)])
    text = exp.render(store).decode()
    assert '# HELP a_total A counter.\\nSecond line.\n# TYPE a_total counter\na_total{x="q\\"\\\\\\n"} 3\n' in text
    assert "hidden" not in text
    assert "# TYPE gone untyped\ngone 1\n" in text
    assert "\nb " not in text and not text.startswith("b ")  # absent samples are not exported
    store.begin_tick(2)
    store.add([Sample("a_total", (("x", "y"),), 4.5)])
    text = exp.render(store).decode()
    assert "gone" not in text and 'a_total{x="y"} 4.5' in text and "q\\" not in text


def test_format_value():
    assert [format_value(v) for v in (1.0, -2.0, 0.5, math.inf, -math.inf, math.nan, 1e20)] == [
        "1", "-2", "0.5", "+Inf", "-Inf", "NaN", "1e+20"]
