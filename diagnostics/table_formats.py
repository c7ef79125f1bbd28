"""Submission tables as files: a table's layout (title, column headers, body, footnotes) rendered as RTF, DOCX and
HTML, and the number formats of a clinical study report.

The content (which number goes where) is diagnostics/csr_tables.py's: it builds a `TableLayout` from the analysis
results dataset, with every number formatted here:
    mean_cri(-8.43, -9.71, -7.12)  -> "-8.4 (-9.7, -7.1)"   points to 1 decimal
    mean_sd(27.93, 5.84)           -> "27.9 (5.8)"
    probability(0.9534)            -> "0.953"               3 decimals; "<0.001" and ">0.999" at the ends
    count(126.0)                   -> "126"
    points(4.37)                   -> "4.4"

Renderers (each returns the file's bytes, or the HTML text):
    rtf(layout)   RTF by rtflite (RTFDocument with RTFTitle, RTFColumnHeader rows, RTFBody, RTFFootnote, RTFSource);
                  rtflite and polars are imported on first use (about 0.4 s once per process)
    docx(layout)  a Word document by python-docx: title paragraphs, one table (header rows repeated on each page,
                  spanning header cells merged), footnote paragraphs, the source line
    html(layout)  a <table> with its title as caption and the footnotes below it, for the report

rtflite writes the text of titles, cells and footnotes as given, so `rtf_text` escapes it first (backslash and
braces, and every character outside ASCII as \\uN?), and its LaTeX-like conversion of text is turned off.
"""

from __future__ import annotations

import html as _html
import io
import math
from dataclasses import dataclass

P_DECIMALS = 3
POINT_DECIMALS = 1
MISSING = "NE"  # not estimable (a number the draws do not give)


@dataclass(frozen=True)
class TableLayout:
    """A table as a clinical study report prints it; every number already formatted (csr_tables builds it)."""

    title: tuple[str, ...]  # title lines, the first the table's name
    header: tuple[tuple[tuple[str, int], ...], ...]  # column header rows, each a tuple of (text, columns spanned)
    body: tuple[tuple[str, ...], ...]  # rows, one text per column
    widths: tuple[float, ...]  # relative column widths
    footnotes: tuple[str, ...] = ()
    source: str = ""
    group_rows: tuple[int, ...] = ()  # body rows that open a group (a visit): a rule above them
    landscape: bool = False
    left: int = 1  # the first `left` columns (labels) are left-aligned, the others (numbers) centred

    @property
    def n_columns(self) -> int:
        return len(self.widths)

    def justify(self) -> list[str]:
        """Per column 'l' (a label) or 'c' (numbers)."""
        return ["l" if j < self.left else "c" for j in range(self.n_columns)]


# ---------------------------------------------------------------- numbers


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _fixed(x: float, decimals: int) -> str:
    text = f"{float(x):.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # never "-0.0"


def points(x, decimals: int = POINT_DECIMALS) -> str:
    """A value in outcome points, e.g. '-8.4'."""
    return _fixed(x, decimals) if _finite(x) else MISSING


def mean_cri(mean, lower, upper, decimals: int = POINT_DECIMALS) -> str:
    """'-8.4 (-9.7, -7.1)': a posterior mean and its credible interval."""
    return f"{points(mean, decimals)} ({points(lower, decimals)}, {points(upper, decimals)})"


def mean_sd(mean, sd, decimals: int = POINT_DECIMALS) -> str:
    """'27.9 (5.8)'."""
    return f"{points(mean, decimals)} ({points(sd, decimals)})"


def probability(p, decimals: int = P_DECIMALS) -> str:
    """A posterior probability to 3 decimals; below 0.0005 '<0.001', above 0.9995 '>0.999'."""
    if not _finite(p):
        return MISSING
    p = float(p)
    least = 10.0 ** -decimals
    if p < least / 2:
        return f"<{least:.{decimals}f}"
    if p > 1 - least / 2:
        return f">{1 - least:.{decimals}f}"
    return f"{p:.{decimals}f}"


def setting(x) -> str:
    """A chosen value (an MCID, a delta, a threshold) as given: '2', '0.5', '0.975'."""
    return f"{float(x):g}" if _finite(x) else MISSING


def count(n) -> str:
    return str(int(round(float(n)))) if _finite(n) else MISSING


# ---------------------------------------------------------------- RTF


def rtf_text(text: str) -> str:
    """Text as RTF writes it: backslash and braces escaped, every character outside ASCII as \\uN? (signed 16-bit)."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if ch in "\\{}":
            out.append("\\" + ch)
        elif code < 128:
            out.append(ch)
        else:
            for unit in (ch.encode("utf-16-le")[i:i + 2] for i in range(0, len(ch.encode("utf-16-le")), 2)):
                value = int.from_bytes(unit, "little")
                out.append(f"\\u{value - 65536 if value > 32767 else value}?")
    return "".join(out)


def rtf(layout: TableLayout) -> bytes:
    """The table as an RTF document (rtflite), ASCII bytes."""
    import polars as pl
    import rtflite as rt

    n = layout.n_columns
    columns = [f"c{j}" for j in range(n)]
    frame = pl.DataFrame({c: [rtf_text(row[j]) for row in layout.body] for j, c in enumerate(columns)}, schema={c: pl.String for c in columns})
    widths = list(layout.widths)
    just = layout.justify()
    headers = []
    for row in layout.header:
        spans, start = [], 0
        for _, span in row:
            spans.append(sum(widths[start:start + span]))
            start += span
        justify = just if len(row) == n else ["l"] + ["c"] * (len(row) - 1)
        headers.append(rt.RTFColumnHeader(
            text=[rtf_text(t) for t, _ in row], col_rel_width=spans, text_justification=justify,
            text_convert=[False] * len(row), text_format=["b"] * len(row),
        ))
    top = ["single" if i in layout.group_rows and i > 0 else "" for i in range(len(layout.body))]
    body = rt.RTFBody(
        col_rel_width=widths, text_justification=[just] * len(layout.body),
        text_convert=[[False] * n] * len(layout.body),
        border_top=[[b] * n for b in top] if layout.body else None,
    ) if layout.body else rt.RTFBody(col_rel_width=widths)
    doc = rt.RTFDocument(
        df=frame,
        rtf_page=rt.RTFPage(orientation="landscape" if layout.landscape else "portrait", nrow=max(60, len(layout.body) + 30),
                            margin=[1.0, 1.0, 1.0, 1.0, 0.5, 0.5]),  # inches: left, right, top, bottom, header, footer
        rtf_title=rt.RTFTitle(text=[rtf_text(t) for t in layout.title], text_convert=[False] * len(layout.title)),
        rtf_column_header=headers,
        rtf_body=body,
        rtf_footnote=rt.RTFFootnote(text=[rtf_text(t) for t in layout.footnotes], text_convert=[False] * len(layout.footnotes))
        if layout.footnotes else None,
        rtf_source=rt.RTFSource(text=[rtf_text(layout.source)], text_convert=[False]) if layout.source else None,
    )
    return doc.rtf_encode().encode("ascii")


# ---------------------------------------------------------------- DOCX


def _repeat_header(row) -> None:
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    props = row._tr.get_or_add_trPr()
    flag = OxmlElement("w:tblHeader")
    flag.set(qn("w:val"), "true")
    props.append(flag)


def docx(layout: TableLayout) -> bytes:
    """The table as a Word document (python-docx): title, a table with its header rows, footnotes and source."""
    from docx import Document
    from docx.enum.section import WD_ORIENT
    from docx.enum.table import WD_TABLE_ALIGNMENT
    from docx.enum.text import WD_ALIGN_PARAGRAPH
    from docx.shared import Cm, Pt

    doc = Document()
    section = doc.sections[0]
    if layout.landscape:
        section.orientation = WD_ORIENT.LANDSCAPE
        section.page_width, section.page_height = section.page_height, section.page_width
    for margin in ("left_margin", "right_margin", "top_margin", "bottom_margin"):
        setattr(section, margin, Cm(2.0))
    style = doc.styles["Normal"]
    style.font.name, style.font.size = "Times New Roman", Pt(9)
    for k, line in enumerate(layout.title):
        p = doc.add_paragraph()
        p.alignment = WD_ALIGN_PARAGRAPH.CENTER
        p.paragraph_format.space_after = Pt(2)
        run = p.add_run(line)
        run.bold = k == 0
        run.font.size = Pt(11 if k == 0 else 10)
    n = layout.n_columns
    table = doc.add_table(rows=0, cols=n)
    table.style = "Table Grid"
    table.alignment = WD_TABLE_ALIGNMENT.CENTER
    usable = section.page_width - section.left_margin - section.right_margin
    total = float(sum(layout.widths))
    widths = [int(usable * w / total) for w in layout.widths]
    for column, width in zip(table.columns, widths):
        column.width = width  # the grid; each row added takes its cells' widths from it
    for header in layout.header:
        row = table.add_row()
        _repeat_header(row)
        cells = row.cells
        col = 0
        for text, span in header:
            cell = cells[col]
            if span > 1:
                cell = cell.merge(cells[col + span - 1])
            p = cell.paragraphs[0]
            p.alignment = WD_ALIGN_PARAGRAPH.LEFT if col < (layout.left if len(header) == n else 1) else WD_ALIGN_PARAGRAPH.CENTER
            p.add_run(text).bold = True
            col += span
    groups = set(layout.group_rows)
    for i, values in enumerate(layout.body):
        cells = table.add_row().cells
        for j, (cell, text) in enumerate(zip(cells, values)):
            p = cell.paragraphs[0]
            if j >= layout.left:
                p.alignment = WD_ALIGN_PARAGRAPH.CENTER
            run = p.add_run(text)
            if j == 0 and i in groups:
                run.bold = True
    for line in layout.footnotes:
        p = doc.add_paragraph()
        p.paragraph_format.space_after = Pt(0)
        p.add_run(line).font.size = Pt(8)
    if layout.source:
        p = doc.add_paragraph()
        p.add_run(layout.source).font.size = Pt(8)
    buffer = io.BytesIO()
    doc.save(buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------- HTML


def html(layout: TableLayout, table_id: str = "") -> str:
    """The table for the report: a <table> (class 'csr') with the title as its caption, footnotes and source below."""
    esc = _html.escape
    ident = f' id="{esc(table_id)}"' if table_id else ""
    caption = "<br>".join(f"<b>{esc(t)}</b>" if k == 0 else esc(t) for k, t in enumerate(layout.title))
    head = "".join("<tr>" + "".join(f'<th colspan="{span}">{esc(t)}</th>' if span > 1 else f"<th>{esc(t)}</th>" for t, span in row)
                   + "</tr>" for row in layout.header)
    group = ' class="group"'
    align = [' class="label"' if j < layout.left else "" for j in range(layout.n_columns)]
    body = "".join(
        f"<tr{group if i in layout.group_rows else ''}>" + "".join(f"<td{a}>{esc(v)}</td>" for a, v in zip(align, row)) + "</tr>"
        for i, row in enumerate(layout.body)
    )
    notes = "".join(f"<li>{esc(t)}</li>" for t in layout.footnotes)
    source = f'<p class="source">{esc(layout.source)}</p>' if layout.source else ""
    return (f'<div class="csr"{ident}><table class="csr"><caption>{caption}</caption><thead>{head}</thead><tbody>{body}</tbody></table>'
            f'<ol class="footnotes">{notes}</ol>{source}</div>')
