(() => {
"use strict";
const data = JSON.parse(document.getElementById("page-data").textContent);
const app = document.getElementById("app");
const tip = document.getElementById("tip");
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined && c !== "") node.append(c);
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}
const isNum = (v) => typeof v === "number" && isFinite(v);
const fmt = (v, digits) => (isNum(v) ? v.toFixed(digits) : "–");
const fmtW = (v) => (isNum(v) ? String(+v.toFixed(4)) : "–");
function rich(text) {  // `code` spans in plain text; everything else stays text
  return String(text).split("`").map((part, i) => (i % 2 ? el("code", { text: part }) : part));
}
function section(id, title, ...children) {
  return el("section", { id }, el("h2", { text: title }), ...children);
}
function imageUrl(spec, i, index) {
  if (spec === null || spec === undefined) return null;
  if (typeof spec === "string")
    return spec.replace(/\{index(?::0(\d+)d)?\}/g, (_, width) => String(index).padStart(+(width || 0), "0"));
  return spec[i] ?? null;
}
function thumb(src, alt, attrs) {
  if (!src) return el("div", { class: "missing", text: "no image" });
  // loading is set before src, or Chromium starts the request at once
  const img = el("img", { loading: "lazy", decoding: "async", alt, title: alt, ...(attrs || {}), src });
  img.addEventListener("load", () => { if (img.naturalWidth < 64) img.classList.add("pixelated"); });
  img.addEventListener("error", () => img.classList.add("broken"));
  return el("a", { class: "thumb", href: src, target: "_blank", rel: "noopener" }, img);
}

function header() {
  const head = app.querySelector("header");
  if (data.subtitle) head.append(el("p", { class: "sub" }, rich(data.subtitle)));
  if (data.links.length)
    head.append(el("nav", { class: "links" }, data.links.map(([label, href]) => el("a", { href, text: label }))));
  if (!data.card.length && data.deviations === null) return;
  const card = el("section", { class: "card", id: "protocol" },
    el("dl", {}, data.card.map(([k, v]) => [el("dt", { text: k }),
      el("dd", {}, rich(Array.isArray(v) ? v.join(", ") : v))])));
  if (data.deviations !== null) {
    const items = data.deviations.length
      ? data.deviations.map((d) => el("li", {}, "⚠ ", rich(d)))
      : [el("li", { class: "none", text: "No deviations from the paper's protocol." })];
    card.append(el("ul", { class: "deviations", "aria-label": "deviations from the paper's protocol" }, items));
  }
  app.append(card);
}

// A sortable table: columns [{key, label, type: "text"|undefined, digits, higher_is_better, metric}].
function sortableTable(id, columns, rows, opts) {
  const state = { key: null, dir: 1 };
  const tbody = el("tbody");
  const heads = columns.map((c) => {
    const dir = !c.metric ? null : el("span", { class: "dir", text: c.higher_is_better ? "↑" : "↓",
      title: c.higher_is_better ? "higher is better" : "lower is better" });
    const button = el("button", { type: "button", class: "sort", "data-key": c.key, title: "Sort by " + c.label },
      c.label, dir, el("span", { class: "arrow" }));
    button.addEventListener("click", () => {
      state.dir = state.key === c.key ? -state.dir : 1;
      state.key = c.key;
      draw();
    });
    return el("th", { scope: "col", "data-key": c.key, "aria-sort": "none" }, button);
  });
  const sortValue = (row, c) => (c.type === "text" ? String(row[c.key] ?? "") : isNum(row[c.key]) ? row[c.key] : null);
  function draw() {
    const order = rows.map((_, i) => i);
    const c = columns.find((col) => col.key === state.key);
    if (c) order.sort((a, b) => {
      const va = sortValue(rows[a], c), vb = sortValue(rows[b], c);
      if (va === null || vb === null) return (va === null) - (vb === null) || a - b;  // missing values last
      const d = c.type === "text" ? va.localeCompare(vb, undefined, { numeric: true }) : va - vb;
      return d * state.dir || a - b;
    });
    for (const th of heads) {
      const on = th.dataset.key === state.key;
      th.setAttribute("aria-sort", on ? (state.dir > 0 ? "ascending" : "descending") : "none");
      th.querySelector(".arrow").textContent = on ? (state.dir > 0 ? " ▲" : " ▼") : "";
    }
    tbody.replaceChildren(...order.map((i) => {
      const tr = el("tr", { "data-key": opts.rowKey(rows[i]), "data-row": i },
        columns.map((col) => cell(rows[i], col)));
      if (opts.onRow) tr.addEventListener("click", () => opts.onRow(i));
      return tr;
    }));
  }
  function cell(row, c) {
    if (c.type === "text") {
      const td = el("td", { "data-key": c.key }, el("span", { class: "name", text: row[c.key] }));
      if (Array.isArray(row.within_noise_of) && row.within_noise_of.length) td.append(" ", noise(row.within_noise_of));
      return td;
    }
    const v = row[c.key];
    const td = el("td", { "data-key": c.key, "data-value": isNum(v) ? v : "" },
      el("span", { class: "v", text: c.short ? fmtW(v) : fmt(v, c.digits) }));
    const lo = row[c.key + "_lo"], hi = row[c.key + "_hi"];
    if (isNum(lo) && isNum(hi))
      td.append(" ", el("span", { class: "iv", text: `[${fmt(lo, c.digits)}, ${fmt(hi, c.digits)}]` }));
    const wn = row.within_noise_of;
    if (wn && !Array.isArray(wn) && Array.isArray(wn[c.key]) && wn[c.key].length) td.append(" ", noise(wn[c.key]));
    const paper = row.paper && row.paper[c.key];
    if (isNum(paper)) {
      const d = isNum(v) ? v - paper : null;
      const better = d !== null && (c.higher_is_better ? d >= 0 : d <= 0);
      td.append(el("span", { class: "paper" }, "paper " + fmt(paper, c.digits),
        d === null ? null : el("span", { class: "delta " + (better ? "good" : "worse"),
          text: " Δ " + (d >= 0 ? "+" : "−") + fmt(Math.abs(d), c.digits) })));
    }
    return td;
  }
  function noise(names) {
    return el("span", { class: "noise", title: "within noise of " + names.join(", "), text: "≈" });
  }
  draw();
  return el("table", { class: "metrics", id }, el("thead", {}, el("tr", {}, heads)), tbody);
}

function viewer(g) {
  const rows = g.captions.map((caption, i) => ({ i, index: g.indices[i], caption, lower: caption.toLowerCase() }));
  const size = Math.max(1, g.page_size || 20);
  let shown = rows, page = 0;
  const search = el("input", { type: "search", id: "viewer-search", placeholder: "Search captions (text or #index)",
    "aria-label": "Search captions", autocomplete: "off" });
  const count = el("span", { class: "count", id: "viewer-count" });
  const pager = (suffix) => ({ prev: el("button", { type: "button", class: "page", id: "viewer-prev" + suffix,
    text: "‹ Prev" }), pageno: el("span", { class: "pageno", id: "viewer-page" + suffix }),
  next: el("button", { type: "button", class: "page", id: "viewer-next" + suffix, text: "Next ›" }) });
  const top = pager(""), bottom = pager("-bottom");
  const tbody = el("tbody");
  const table = el("table", { class: "viewer", id: "viewer" },
    el("thead", {}, el("tr", {}, el("th", { class: "cap-col", scope: "col", text: "caption" }),
      g.models.map(([name]) => el("th", { scope: "col", "data-model": name, text: name })))), tbody);
  function draw() {
    const pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.min(Math.max(page, 0), pages - 1);
    const slice = shown.slice(page * size, (page + 1) * size);
    tbody.replaceChildren(...slice.map((r) => el("tr", { "data-index": r.index },
      el("td", { class: "cap" }, el("span", { class: "idx", text: "#" + r.index }),
        el("span", { class: "caption", text: r.caption })),
      g.models.map(([name, spec]) => el("td", { "data-model": name, "data-index": r.index },
        thumb(imageUrl(spec, r.i, r.index), `${name}: ${r.caption}`, { "data-index": r.index }))))));
    if (!slice.length)
      tbody.append(el("tr", {}, el("td", { class: "empty", colspan: g.models.length + 1,
        text: "No caption matches." })));
    const first = shown.length ? page * size + 1 : 0;
    count.textContent = `${first}–${page * size + slice.length} of ${shown.length} captions` +
      (shown.length < rows.length ? ` (filtered from ${rows.length})` : "");
    for (const p of [top, bottom]) {
      p.pageno.textContent = `page ${page + 1} of ${pages}`;
      p.prev.disabled = page === 0;
      p.next.disabled = page >= pages - 1;
    }
  }
  search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    shown = q ? rows.filter((r) => r.lower.includes(q) || "#" + r.index === q) : rows;
    page = 0;
    draw();
  });
  const toolbar = el("div", { class: "toolbar" }, search, top.prev, top.pageno, top.next, count);
  for (const [p, scroll] of [[top, false], [bottom, true]]) {
    const go = (step) => () => { page += step; draw(); if (scroll) toolbar.scrollIntoView({ block: "start" }); };
    p.prev.addEventListener("click", go(-1));
    p.next.addEventListener("click", go(1));
  }
  draw();
  const note = g.note ||
    "Each row is one caption with the same sample index, hence the same seed, in every model's column.";
  return section("gallery", "Side by side", el("p", { class: "note" }, rich(note)),
    toolbar, table, el("div", { class: "toolbar" }, bottom.prev, bottom.pageno, bottom.next));
}

function perModel(list) {
  const out = section("per-model", "Per model");
  for (const [name, m] of list) {
    const parts = [], counts = [];
    if (m.lowest_clip) {
      counts.push(`${m.lowest_clip.length} lowest-CLIP`);
      parts.push(el("h3", { text: "Lowest CLIP score" }), el("div", { class: "strip lowest-clip" },
        m.lowest_clip.map((e) => el("figure", { "data-index": e.index }, thumb(e.image, e.caption),
          el("figcaption", {}, el("span", { class: "score", text: `${fmt(e.score, 4)} · #${e.index} ` }),
            e.caption)))));
    }
    for (const [key, title, cls] of [["least_diverse", "Least diverse prompts", "least-diverse"],
                                      ["most_diverse", "Most diverse prompts", "most-diverse"]]) {
      if (!m[key]) continue;
      counts.push(`${m[key].length} ${title.split(" ")[0].toLowerCase()} diverse`);
      parts.push(el("h3", { text: title }), el("div", { class: cls },
        m[key].map((e) => el("div", { class: "diverse", "data-index": e.index ?? "" },
          el("div", {}, el("div", { class: "score", text: `diversity ${fmt(e.score, 4)}` +
            (e.index !== undefined ? ` · #${e.index}` : "") }), e.caption),
          el("div", { class: "imgs" }, (e.images || []).map((src) => thumb(src, e.caption)))))));
    }
    if (m.nonfinite) {
      const n = m.nonfinite.length;
      counts.push(el("span", { class: n ? "bad" : "", text: `${n} non-finite` }));
      parts.push(el("h3", { text: "Non-finite samples" }), n
        ? el("ul", { class: "nonfinite" }, m.nonfinite.map((e) =>
          el("li", { "data-index": e.index }, el("span", { class: "idx", text: "#" + e.index }), e.caption || "")))
        : el("p", { class: "note nonfinite", text: "None: every sample is finite." }));
    }
    const summary = el("summary", {}, name, el("span", { class: "count" },
      counts.flatMap((c, i) => (i ? [" · ", c] : [c]))));
    out.append(el("details", { class: "model", "data-model": name, open: m.nonfinite && m.nonfinite.length > 0 },
      summary, parts));
  }
  return out;
}

function notes() {
  const parts = [];
  if (data.table_note) parts.push(el("p", { class: "note" }, rich(data.table_note)));
  if (data.notes.length) parts.push(el("ul", { class: "notes" }, data.notes.map((n) => el("li", {}, rich(n)))));
  return parts;
}

function runPage() {
  const columns = [{ key: "model", label: "model", type: "text" }, { key: "n", label: "N", digits: 0 },
    ...data.columns.map((c) => ({ ...c, metric: true }))];
  const table = sortableTable("results", columns, data.rows, { rowKey: (r) => r.model });
  app.append(section("table", "Results", table, notes()));
  if (data.gallery) app.append(viewer(data.gallery));
  if (data.per_model && data.per_model.length) app.append(perModel(data.per_model));
}

// One panel per metric: x = w, y = the metric; a circle per point (class "pt", data-w, data-metric, data-i).
function panel(metric, points, hooks) {
  const W = 320, H = 230, L = 54, R = 14, T = 28, B = 42;
  const ok = points.map((p, i) => [p, i]).filter(([p]) => isNum(p[metric.key]));
  const ws = points.map((p) => p.w);
  let x0 = Math.min(...ws), x1 = Math.max(...ws);
  if (x0 === x1) { x0 -= 0.5; x1 += 0.5; }
  const padX = (x1 - x0) * 0.04;  // room for the end points' circles
  x0 -= padX; x1 += padX;
  const ys = ok.flatMap(([p]) => [p[metric.key], p[metric.key + "_lo"], p[metric.key + "_hi"]].filter(isNum));
  let y0 = ys.length ? Math.min(...ys) : 0, y1 = ys.length ? Math.max(...ys) : 1;
  const pad = (y1 - y0 || Math.abs(y0) || 1) * 0.1;
  y0 -= pad; y1 += pad;
  const sx = (w) => L + ((w - x0) / (x1 - x0)) * (W - L - R);
  const sy = (v) => H - B - ((v - y0) / (y1 - y0)) * (H - T - B);
  const g = svg("svg", { class: "plot", viewBox: `0 0 ${W} ${H}`, "data-metric": metric.key,
    role: "img", "aria-label": `${metric.label} against w` });
  g.append(svg("text", { class: "title", x: L, y: 17 }, `${metric.label} ${metric.higher_is_better ? "↑" : "↓"}`));
  const yt = ticks(y0, y1, 5);
  for (const v of yt.values) {
    g.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: sy(v), y2: sy(v) }));
    g.append(svg("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end" }, v.toFixed(yt.digits)));
  }
  const xt = ws.length <= 6 ? { values: ws, digits: null } : ticks(x0, x1, 5);
  for (const v of xt.values)
    g.append(svg("text", { x: sx(v), y: H - B + 16, "text-anchor": "middle" },
      xt.digits === null ? fmtW(v) : v.toFixed(xt.digits)));
  g.append(svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, `w (0 = ${data.a}, 1 = ${data.b})`));
  g.append(svg("rect", { class: "frame", x: L, y: T, width: W - L - R, height: H - T - B }));
  if (ok.length > 1) {
    const d = ok.map(([p], k) => `${k ? "L" : "M"}${sx(p.w)},${sy(p[metric.key])}`).join("");
    g.append(svg("path", { class: "line", d }));
  }
  for (const [p, i] of ok) {
    const lo = p[metric.key + "_lo"], hi = p[metric.key + "_hi"];
    if (isNum(lo) && isNum(hi))
      g.append(svg("line", { class: "err", x1: sx(p.w), x2: sx(p.w), y1: sy(lo), y2: sy(hi) }));
  }
  for (const [p, i] of ok) {
    const c = svg("circle", { class: "pt" + (i === data.best ? " best" : ""), cx: sx(p.w), cy: sy(p[metric.key]),
      r: 5.5, tabindex: 0, "data-w": p.w, "data-metric": metric.key, "data-i": i });
    c.addEventListener("mouseenter", (e) => hooks.hover(i, e.clientX, e.clientY));
    c.addEventListener("mousemove", (e) => hooks.hover(i, e.clientX, e.clientY));
    c.addEventListener("mouseleave", () => hooks.hover(null));
    c.addEventListener("focus", () => { const r = c.getBoundingClientRect(); hooks.hover(i, r.right, r.bottom); });
    c.addEventListener("blur", () => hooks.hover(null));
    c.addEventListener("click", () => hooks.select(i));
    c.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); hooks.select(i); }
    });
    g.append(c);
  }
  return g;
}

function ticks(lo, hi, n) {
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / mag;
  const step = mag * (f >= 7.5 ? 10 : f >= 3.5 ? 5 : f >= 1.5 ? 2 : 1);
  const values = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) values.push(+v.toFixed(12));
  return { values, digits: Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) };
}

function pointSummary(p) {
  const lines = [`w = ${fmtW(p.w)}  (λ = ${fmtW(p.lambda)})`];
  for (const m of data.metrics) {
    const lo = p[m.key + "_lo"], hi = p[m.key + "_hi"];
    const interval = isNum(lo) && isNum(hi) ? `  [${fmt(lo, m.digits)}, ${fmt(hi, m.digits)}]` : "";
    lines.push(`${m.label} ${fmt(p[m.key], m.digits)}${interval}`);
  }
  return lines.join("\n");
}

function sweepPage() {
  const points = data.points;
  const convention = el("p", { class: "sub convention" }, rich(data.convention));
  if (data.convention) app.querySelector("header h1").after(convention);
  const plots = el("div", { class: "plots", id: "plots" });
  const images = section("point-images", "Samples");
  const hooks = {
    hover(i, x, y) {
      for (const c of plots.querySelectorAll("circle.pt"))
        c.classList.toggle("hover", i !== null && +c.dataset.i === i);
      if (i === null) { tip.hidden = true; return; }
      tip.textContent = pointSummary(points[i]);
      tip.hidden = false;
      const r = tip.getBoundingClientRect();
      tip.style.left = Math.min(x + 14, window.innerWidth - r.width - 8) + "px";
      tip.style.top = Math.min(y + 14, window.innerHeight - r.height - 8) + "px";
    },
    select(i) {
      for (const c of plots.querySelectorAll("circle.pt")) c.classList.toggle("selected", +c.dataset.i === i);
      for (const tr of document.querySelectorAll("#points tbody tr"))
        tr.classList.toggle("selected", +tr.dataset.row === i);
      const p = points[i];
      const heading = el("p", { class: "note", id: "point-summary", "data-i": i, "data-w": p.w },
        `w = ${fmtW(p.w)} (λ = ${fmtW(p.lambda)})` + (i === data.best ? ", best FID" : "") + ": " +
        data.metrics.map((m) => `${m.label} ${fmt(p[m.key], m.digits)}`).join(", "));
      const strip = p.images === null || !data.captions.length
        ? el("p", { class: "note", text: "No images were saved for this point." })
        : el("div", { class: "strip", id: "point-strip", "data-i": i }, data.captions.map((caption, k) =>
          el("figure", { "data-index": data.indices[k] },
            thumb(imageUrl(p.images, k, data.indices[k]), `w = ${fmtW(p.w)}: ${caption}`, { "data-w": p.w }),
            el("figcaption", {}, el("span", { class: "idx", text: "#" + data.indices[k] }), caption))));
      images.replaceChildren(images.firstChild, heading, strip);
    },
  };
  for (const m of data.metrics) plots.append(panel(m, points, hooks));
  const best = data.best === null ? null : points[data.best];
  app.append(section("figure3", "Figure 3", plots, el("p", { class: "legend" }, el("span", { class: "dot" }),
    best ? `best FID at w = ${fmtW(best.w)} (λ = ${fmtW(best.lambda)}). ` : "",
    "Hover a point for its numbers; click it (or a table row) for its samples on the shared captions.")));
  app.append(images);
  const columns = [{ key: "w", label: "w", short: true }, { key: "lambda", label: "λ (Eq. 6)", short: true },
    { key: "n", label: "N", digits: 0 }, ...data.metrics.map((c) => ({ ...c, metric: true }))];
  app.append(section("table", "Points", sortableTable("points", columns, points,
    { rowKey: (p) => "w=" + fmtW(p.w), onRow: (i) => hooks.select(i) }), notes()));
  hooks.select(data.best ?? 0);
}

header();
if (data.kind === "sweep") sweepPage(); else runPage();
document.documentElement.dataset.ready = "1";
})();
