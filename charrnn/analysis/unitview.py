"""`charrnn cells`: units' values shown on their text, coloured for a terminal, plain lines for scripts, or a
standalone HTML page; the --find table.

A value's colour runs from blue at -1 through white at 0 to red at +1 (values are clipped to [-1, 1]), as in
Karpathy, Johnson and Fei-Fei's figures; the text on it is black, or white on the darkest colours.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from charrnn.analysis import signals, units
from charrnn.analysis.score import drop_unknown
from charrnn.atomic import writing
from charrnn.console import info, note, printable, warn
from charrnn.data.text import read_text
from charrnn.errors import CharrnnError, UsageError
from charrnn.model.files import load_chosen

WHITE, BLUE, RED = np.array([255, 255, 255]), np.array([33, 102, 204]), np.array([214, 39, 40])


def colours(values: np.ndarray) -> list[tuple[int, int, int]]:
    """Background (R, G, B) of each value (n,): white at 0, blue at -1, red at +1, linear between; NaN is white."""
    v = np.nan_to_num(np.clip(np.asarray(values, dtype=np.float64), -1, 1), nan=0.0)[:, None]  # (n, 1)
    rgb = np.rint(WHITE + (np.where(v > 0, RED, BLUE) - WHITE) * np.abs(v)).astype(int)  # (n, 3)
    return [tuple(c) for c in rgb.tolist()]


def ink(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Readable text colour on a background: black unless the background is dark."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b >= 140 else (255, 255, 255)


def shown(ch: str) -> str:
    """A character as it can be shown safely: printable ones as they are (a backslash as \\\\), others (control
    characters, other whitespace than space) by their Python escape, e.g. \\n, \\t, \\x1b, \\u2028."""
    return "\\\\" if ch == "\\" else printable(ch)


def terminal(text: str, values: np.ndarray) -> Iterator[str]:
    """The text with each character's background in its value's colour (24-bit escapes), one line at a time.
    Newlines and tabs stay; other control characters are written escaped (a text cannot drive the terminal)."""
    line = []
    for ch, bg in zip(text, colours(values), strict=True):
        if ch == "\n":
            yield "".join(line) + "\x1b[0m\n"
            line = []
            continue
        fg = ink(bg)
        line.append(f"\x1b[48;2;{bg[0]};{bg[1]};{bg[2]};38;2;{fg[0]};{fg[1]};{fg[2]}m"
                    f"{ch if ch == chr(9) else shown(ch)}")
    if line:
        yield "".join(line) + "\x1b[0m\n"


def plain(text: str, values: np.ndarray) -> Iterator[str]:
    """One line per character: the character (escaped as shown() does, so newlines and tabs are \\n and \\t),
    then a tab and each unit's value (columns as values (n, K)), six decimals, tab-separated."""
    for ch, row in zip(text, values.tolist(), strict=True):
        yield shown(ch) + "".join(f"\t{v:.6f}" for v in row) + "\n"


def script_json(data) -> str:
    """JSON that is safe inside <script>: no <, > or & (so no </script> or <!--), ASCII only."""
    s = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.2em}h2{font-size:1em;margin:1.4em 0 .4em}
.text{font-family:monospace;white-space:pre-wrap;line-height:1.35;background:#fff;padding:.6em;border:1px solid #ccc}
.text span{cursor:default}
.text span:hover{outline:1px solid #000}
#info{position:sticky;top:0;background:#fff;border:1px solid #999;padding:.4em .6em;font-family:monospace;
min-height:1.3em;white-space:pre}
.scale{display:inline-block;width:12em;height:.9em;vertical-align:middle;
background:linear-gradient(to right,rgb(33,102,204),#fff,rgb(214,39,40))}
"""

SCRIPT = """
(function(){
var data=JSON.parse(document.getElementById('cells-data').textContent);
var info=document.getElementById('info');
function show(c){return JSON.stringify(c);}
document.querySelectorAll('.text').forEach(function(block){
  var u=+block.dataset.unit, spans=block.children;
  for(var i=0;i<spans.length;i++){spans[i].dataset.i=i;}
  block.addEventListener('mouseover',function(e){
    var i=e.target.dataset?e.target.dataset.i:undefined; if(i===undefined)return; i=+i;
    var top=data.top[i].map(function(p){return show(p[0])+' '+(100*p[1]).toFixed(1)+'%';}).join('  ');
    info.textContent='char '+show(data.text[i])+'  unit '+data.units[u].name+' '+data.units[u].state+
      ' = '+data.units[u].values[i].toFixed(4)+'   next: '+top;
  });
});
})();
"""


def page(title: str, text: str, units: list[dict], top: list[list[tuple[str, float]]]) -> str:
    """A standalone HTML page: one block per unit (dicts with name, state, label and values (n,)), each
    character a span coloured by the value; hovering shows the value and the five likeliest next characters
    (top: per character, (char, probability) pairs). No network: styles, data and script are inline."""
    blocks = []
    for k, unit in enumerate(units):
        spans = "".join(f'<span style="background:rgb{bg};color:rgb{ink(bg)}">{html.escape(ch)}</span>'
                        for ch, bg in zip(text, colours(unit["values"]), strict=True))
        blocks.append(f'<h2>{html.escape(unit["label"])}</h2>\n<div class="text" data-unit="{k}">{spans}</div>')
    data = {"text": list(text), "top": [[[c, round(p, 4)] for c, p in row] for row in top],
            "units": [{"name": u["name"], "state": u["state"], "values": [round(v, 4) for v in u["values"]]}
                      for u in units]}
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            '<p>-1 <span class="scale"></span> +1 &nbsp; Hover over a character for its value and the '
            "model's five likeliest next characters.</p>\n"
            '<div id="info"></div>\n' + "\n".join(blocks) + "\n"
            f'<script type="application/json" id="cells-data">{script_json(data)}</script>\n'
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")


def lines(text: str, labels: list[str], values: np.ndarray, colour: bool) -> Iterator[str]:
    """At a terminal: each unit's block under its label, coloured; else one `char<TAB>value...` line a character."""
    if not colour:
        yield from plain(text, values)
        return
    for k, label in enumerate(labels):
        yield f"\x1b[1m{label}\x1b[0m\n"
        yield from terminal(text, values[:, k])


def report_page(title: str, text: str, chosen: list[units.Unit], labels: list[str], rec: units.Recording,
                vocab) -> str:
    """The page for the chosen units under their labels, from a Recording of text."""
    nexts = [[(vocab.chars[i], p) for i, p in zip(row_ids, row_probs, strict=True)]
             for row_ids, row_probs in zip(rec.top_ids.tolist(), rec.top_probs.tolist(), strict=True)]
    blocks = [{"name": str(u), "state": u.state, "label": label, "values": rec.values[:, k].tolist()}
              for k, (u, label) in enumerate(zip(chosen, labels, strict=True))]
    return page(title, text, blocks, nexts)


def write_page(path: Path, content: str) -> None:
    """Write the page atomically; a failure is one line naming the file."""
    with writing(path, "w", encoding="utf-8") as f:
        f.write(content)
    info(f"wrote {path}")


def constant_refused(signal: np.ndarray, find: str, name: str) -> np.ndarray:
    """signal (N,), unless it has the same value at every character: no unit can follow that (a usage error)."""
    if len(signal) and signal.min() == signal.max():
        raise UsageError(f"--find {find} never changes on {name} (it is {signal[0]:g} at every character), so no "
                         f"unit can follow it; give a text where it changes, or another signal ({signals.KNOWN})")
    return signal


def cells(*, source: str, checkpoint: Path | None, unit: list[str], state: str | None, find: str | None, top: int,
          max_chars: int | None, page: Path | None, values: bool, colour: bool,
          device_name: str) -> Iterator[str] | None:
    """Read source with the model, rank its units for --find, write the --html page; return what goes to stdout
    (the text, coloured or as value lines; the --find table when the text does not go there), or None when
    nothing does (the page alone). Characters outside the model's vocabulary are left out, with a warning."""
    pairs, signal = [units.parse(spec) for spec in unit], signals.parse(find) if find is not None else None
    if signal is None and not pairs:
        raise UsageError("name a unit with --unit LAYER:INDEX (e.g. --unit 0:0), or let --find PREDICATE pick one")
    if page is not None and not page.parent.is_dir():
        raise UsageError(f"--html {page}: no directory {page.parent}")
    if page is not None and max_chars == 0:
        raise UsageError(f"--html {page} with --max-chars 0 would show no characters; give --max-chars N > 0, or "
                         "leave out --html for the --find table alone")
    _, model, vocab, meta, device, _ = load_chosen(checkpoint, device_name, "fp32", "reading")
    states, chosen = units.states_of(model, state), units.check_units(model, pairs, state)
    name, text, _ = read_text(source)
    text, unknown = drop_unknown(vocab, text)
    if unknown:
        warn(f"characters outside the model's vocabulary left out: {''.join(unknown)!r}")
    if not text:
        raise CharrnnError(f"{name} has no characters in the model's vocabulary; nothing to read")
    ids = vocab.encode(text)  # (N,)
    shown = text[:max_chars] if max_chars is not None else text
    to_stdout = bool(shown) and (page is None or values)
    table, found = [], {}
    if signal is not None:
        ranked = units.rank(model, ids, constant_refused(signal(text), find, name), states, device)
        table = units.table(ranked, top, chosen)
        found, chosen = {u: rho for u, rho, _ in ranked}, chosen or [ranked[0][0]]
        for line in table if to_stdout else []:  # the text goes to stdout: the table to stderr
            info(line)
    if len(shown) < len(text):
        note(f"showing the first {len(shown):,} of {len(text):,} characters")
    rec = units.collect(model, ids[: len(shown)], chosen, device)
    labels = [f"layer {u.layer}, unit {u.index} ({u}), {u.state} state"
              + (f": rank correlation {found[u]:+.3f} with {find}" if u in found else "") for u in chosen]
    if page is not None and shown:
        title = f"charrnn cells: {name}, model trained on {meta['corpus']['name']}"
        write_page(page, report_page(title, shown, chosen, labels, rec, vocab))
    if to_stdout:
        return lines(shown, labels, rec.values, colour and not values)
    return iter([line + "\n" for line in table]) if page is None or values or signal is not None else None
