// tsdistill report: plain JavaScript, no library, no network. The data is window.TSD_REPORT (data.js).
"use strict";
(function () {
  const R = window.TSD_REPORT;
  const SVG = "http://www.w3.org/2000/svg";
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
  const byUid = {};
  (R.mixes || []).concat(R.real || [], R.others || []).forEach(s => { byUid[s.uid] = s; });
  // a segmentation release: label maps drawn as layers over the images, class shares, mIoU
  const SEG = R.segmentation || null;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v)) ? "—" :
    (typeof v === "number" ? (Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(d)) : String(v));
  function table(head, rows, cls) {
    const t = el("table", cls ? {class: cls} : {});
    if (head) t.append(el("tr", {}, ...head.map(h => el("th", {text: h}))));
    for (const r of rows) t.append(el("tr", {}, ...r.map(v => el("td", typeof v === "number" ? {class: "num"} : {},
      v instanceof Node ? v : fmt(v)))));
    return t;
  }
  // replaceChildren writes a null as the text "null": what is absent is left out first
  const present = (...nodes) => nodes.filter(n => n !== null && n !== undefined);
  const section = (id, title, ...children) => el("section", {id: id}, el("h2", {text: title}), ...children);

  // -- segmentation: class colours, label layers ---------------------------------------------------
  const swatch = c => el("span", {class: "swatch", style: `background:${SEG.palette[c]}`});
  function classLegend() {
    return el("div", {class: "class-legend"}, ...R.release.classes.map((name, c) =>
      el("span", {class: "legend-item"}, swatch(c), name)));
  }
  // an image with its label maps stacked over it (transparent where unlabelled); which one shows is
  // the overlay control's choice (a class on <body>), a mix's teacher map always
  function layered(src, alt, layers, always) {
    const stack = el("span", {class: "stack"}, el("img", {src: src, alt: alt}));
    for (const [name, path] of Object.entries(layers)) if (path) stack.append(el("img", {src: path, alt: `${alt} ${name}`,
      class: `layer layer-${name}${always ? " layer-always" : ""}`, style: `opacity:${SEG.alpha}`}));
    return stack;
  }
  function overlayControl() {
    const pick = el("select", {class: "overlay-mode"}, ...[["teacher", "the teacher's label map (first view)"],
      ["mask", "the stored mask (real images)"], ["none", "no labels"]].map(([v, t]) => el("option", {value: v, text: t})));
    pick.value = document.body.dataset.overlay || "teacher";
    pick.addEventListener("input", () => {
      document.body.dataset.overlay = pick.value;
      for (const other of document.querySelectorAll(".overlay-mode")) other.value = pick.value;
    });
    return el("label", {}, "labels over the images ", pick);
  }
  const shareList = shares => el("ol", {class: "shares"}, ...shares.map(t => el("li", {}, swatch(t.c), `${t.name} ${fmt(100 * t.p, 1)}%`,
    el("span", {class: "bar", style: `width:${60 * t.p}px`}))));
  const tooltip = el("div", {id: "tooltip"});
  document.body.append(tooltip);
  function hover(node, text) {
    node.addEventListener("mousemove", ev => {
      tooltip.textContent = text; tooltip.style.display = "block";
      tooltip.style.left = (ev.clientX + 12) + "px"; tooltip.style.top = (ev.clientY + 12) + "px";
    });
    node.addEventListener("mouseleave", () => { tooltip.style.display = "none"; });
  }

  // -- the release --------------------------------------------------------------------------------
  function releaseSection() {
    const r = R.release;
    const v = r.verify_quick;
    const verify = el("p", {}, "tsd verify --quick: ", el("span", {class: v.ok ? "ok" : "bad", id: "verify",
      text: v.ok ? "passed" : `failed (${v.count} problems)`}));
    const problems = v.ok ? null : el("pre", {text: v.problems.join("\n")});
    const counts = table(["kind/split", "samples"], Object.entries(r.counts || {}).map(([k, n]) => [k, n]));
    let classes;
    if (SEG) {
      const mp = SEG.mask_pixels, total = Math.max(1, mp.pixels.reduce((a, b) => a + b, 0)), maxp = Math.max(1, ...mp.pixels);
      classes = el("div", {}, el("p", {class: "note", text: `Pixel share of each class in the stored masks of the ${mp.images} ` +
        `real images this report shows (not the whole release: the report reads only what it shows; unlabelled pixels not counted).`}),
        table(["#", "class", "pixel share (masks shown)"], r.classes.map((c, i) =>
          [i, el("span", {}, swatch(i), c), el("span", {}, `${fmt(100 * mp.pixels[i] / total, 1)}%`,
            el("span", {class: "bar", style: `width:${80 * mp.pixels[i] / maxp}px`}))]), "class-table"));
    } else {
      const maxc = Math.max(1, ...r.class_counts);
      classes = table(["#", "class", "real images"], r.classes.map((c, i) =>
        [i, c, el("span", {}, fmt(r.class_counts[i]), el("span", {class: "bar", style: `width:${80 * r.class_counts[i] / maxc}px`}))]));
    }
    const teacherScore = m => SEG ? `val mIoU ${fmt(m.val_miou)}, pixel accuracy ${fmt(m.val_pixel_acc)} (the probe's)` : `val top-1 ${fmt(m.val_top1)}`;
    const models = table(["role", "name", "weights (sha256)", "extra"], r.models.map(m =>
      [m.role, m.name || "—", el("pre", {text: JSON.stringify(m.files || {}, null, 1)}),
       m.role === "teacher" ? `head ${m.head_sha256 || "—"}; ${teacherScore(m)}` : ""]));
    const config = el("details", {}, el("summary", {text: "the resolved job config"}),
      el("pre", {text: JSON.stringify(r.config, null, 1)}));
    return section("release", `Release ${r.name}`,
      el("p", {}, `${r.root} · task ${r.task} · format ${fmt(r.format_version)} · ${r.code_version || ""} · ` +
        `${r.failures} failed samples`), verify, problems,
      el("h3", {text: "Counts"}), counts, el("h3", {text: "Classes"}), classes,
      el("h3", {text: "Models"}), models, config);
  }

  // -- mixes --------------------------------------------------------------------------------------
  function thumb(uid, caption, always) {
    const s = byUid[uid];
    const fig = el("figure", {});
    if (s && SEG) fig.append(el("a", {href: "#sample/" + uid}, layered(s.thumb, uid, {teacher: s.layers.teacher, mask: s.layers.mask}, always)));
    else if (s) fig.append(el("a", {href: "#sample/" + uid}, el("img", {src: s.thumb, alt: uid})));
    else fig.append(el("div", {class: "note", text: "not in the release"}));
    fig.append(el("figcaption", {text: caption}));
    return fig;
  }
  function mixCard(m) {
    const [a, b] = m.parents;
    const pa = byUid[a], pb = byUid[b];
    const w = m.weight === null ? null : m.weight;
    const card = el("div", {class: "mix-card", "data-uid": m.uid});
    const mixFig = thumb(m.uid, SEG ? "mix, the teacher's labels" : "mix", true);
    mixFig.className = "mix";
    const named = p => !p ? "?" : SEG ? (p.mask_top1 === null || p.mask_top1 === undefined ? "—" : R.release.classes[p.mask_top1]) : p.class_name;
    card.append(el("div", {class: "imgs"},
      thumb(a, `A: ${named(pa)} (w ${fmt(w, 2)})`),
      thumb(b, `B: ${named(pb)} (w ${fmt(w === null ? null : 1 - w, 2)})`), mixFig));
    if (SEG) {
      card.append(el("div", {}, `entropy ${fmt(m.entropy)} (mean per location) · confidence ${fmt(m.confidence)} · ` +
        `dominant ${R.release.classes[m.teacher_top1]} · ${m.generator || ""}`), shareList(m.shares));
    } else {
      card.append(el("div", {}, `entropy ${fmt(m.entropy)} · confidence ${fmt(m.confidence)} · ${m.generator || ""}`));
      const ol = el("ol", {});
      for (const t of m.top5) ol.append(el("li", {}, `${t.name} ${fmt(t.p)}`, el("span", {class: "bar", style: `width:${60 * t.p}px`})));
      card.append(ol);
    }
    card.append(el("a", {href: "#sample/" + m.uid, class: "open", text: "views →"}));
    return card;
  }
  function mixesSection() {
    const mixes = R.mixes || [];
    const cards = el("div", {class: "cards", id: "mix-cards"});
    const sort = el("select", {id: "mix-sort"},
      ...[["entropy-desc", "entropy, highest first"], ["entropy-asc", "entropy, lowest first"],
          ["confidence-desc", "teacher confidence, highest first"], ["confidence-asc", "teacher confidence, lowest first"],
          ["weight-desc", "mixing weight of A, highest first"]].map(([v, t]) => el("option", {value: v, text: t})));
    const classOptions = () => [el("option", {value: "", text: "any"}), ...R.release.classes.map((c, i) => el("option", {value: String(i), text: c}))];
    const teacher = el("select", {id: "mix-teacher"}, ...classOptions());
    const parent = el("select", {id: "mix-parent"}, ...classOptions());
    const minEnt = el("input", {id: "mix-min-entropy", type: "number", step: "0.05", value: "0", style: "width:5em"});
    const maxConf = el("input", {id: "mix-max-confidence", type: "number", step: "0.05", value: "1", style: "width:5em"});
    const shown = el("span", {class: "note", id: "mix-shown"});
    function render() {
      const [key, dir] = sort.value.split("-");
      const t = teacher.value, p = parent.value;
      const lo = parseFloat(minEnt.value) || 0, hi = parseFloat(maxConf.value);
      const rows = mixes.filter(m => (t === "" || m.teacher_top1 === +t) &&
        (p === "" || m.parents.some(u => byUid[u] && (SEG ? byUid[u].mask_top1 : byUid[u].label) === +p)) &&
        m.entropy >= lo && (Number.isNaN(hi) || m.confidence <= hi));
      rows.sort((x, y) => ((x[key] - y[key]) * (dir === "asc" ? 1 : -1)) || (x.uid < y.uid ? -1 : 1));
      cards.replaceChildren(...rows.map(mixCard));
      shown.textContent = `${rows.length} of ${mixes.length} shown`;
    }
    for (const c of [sort, teacher, parent, minEnt, maxConf]) c.addEventListener("input", render);
    render();
    const note = SEG ?
      `The ${mixes.length} highest-entropy mixes of ${fmt(R.release.counts["mix/train"] || 0)} (the report shows at most ` +
      `${R.limits.mixes}; entropy: the mean over the first view's locations). Each: parent A, parent B (real, with the dominant ` +
      `class of their mask and their weight), the mix (red frame) with the teacher's label map of its first recorded view, ` +
      `and the classes of that map by pixel share. "Teacher's class" is its dominant class; confidence is the mean over ` +
      `locations of its top class's probability.` :
      `The ${mixes.length} highest-entropy mixes of ${fmt(R.release.counts["mix/train"] || 0)} ` +
      `(the report shows at most ${R.limits.mixes}). Each: parent A, parent B (real, with their class and weight), the mix ` +
      `(red frame) and the teacher's top-5 (mean over its recorded views).`;
    return section("mixes", "Mixes", el("p", {class: "note", text: note}), SEG ? classLegend() : null,
      el("div", {class: "controls"}, el("label", {}, "sort ", sort), el("label", {}, SEG ? "teacher's dominant class " : "teacher's class ", teacher),
        el("label", {}, "a parent's class ", parent), el("label", {}, "entropy ≥ ", minEnt),
        el("label", {}, "confidence ≤ ", maxConf), SEG ? overlayControl() : null, shown), cards);
  }

  // -- real images per class ----------------------------------------------------------------------
  function realSection() {
    if (SEG) return realSectionSeg();
    const grid = el("div", {});
    const byClass = {};
    for (const s of R.real || []) (byClass[s.label] = byClass[s.label] || []).push(s);
    for (const [label, rows] of Object.entries(byClass)) {
      const right = rows.filter(s => s.teacher_top1 === s.label).length;
      grid.append(el("h3", {text: `${R.release.classes[label]}: teacher right on ${right} of ${rows.length}`}));
      grid.append(el("div", {class: "real-grid"}, ...rows.map(s => el("div", {class: "real-card"},
        el("a", {href: "#sample/" + s.uid}, el("img", {src: s.thumb, alt: s.uid})),
        el("div", {class: s.teacher_top1 === s.label ? "ok" : "bad",
          text: `${s.teacher_top1 === s.label ? "✓" : "✗"} ${s.top5[0].name} ${fmt(s.confidence, 2)}`}),
        el("div", {class: "note", text: s.split})))));
    }
    return section("real", "Real images per class",
      el("p", {class: "note", text: `Up to ${R.limits.per_class} per class (validation images first), with the teacher's prediction.`}), grid);
  }

  // a segmentation image has no label: grouped by the teacher's dominant class, checked against its mask's
  function realSectionSeg() {
    const grid = el("div", {});
    const byClass = {};
    for (const s of R.real || []) (byClass[s.teacher_top1] = byClass[s.teacher_top1] || []).push(s);
    for (const [c, rows] of Object.entries(byClass)) {
      const right = rows.filter(s => s.mask_top1 === s.teacher_top1).length;
      grid.append(el("h3", {}, swatch(+c), `${R.release.classes[c]} (the teacher's dominant class): its mask's dominant class agrees on ${right} of ${rows.length}`));
      grid.append(el("div", {class: "real-grid"}, ...rows.map(s => el("div", {class: "real-card", "data-uid": s.uid},
        el("a", {href: "#sample/" + s.uid}, layered(s.thumb, s.uid, {teacher: s.layers.teacher, mask: s.layers.mask})),
        el("div", {class: s.mask_top1 === s.teacher_top1 ? "ok" : "bad",
          text: `${s.mask_top1 === s.teacher_top1 ? "✓" : "✗"} mask: ${s.mask_top1 === null ? "—" : R.release.classes[s.mask_top1]}`}),
        el("div", {class: "note", text: `${s.split} · ${s.shares.length ? `${s.shares[0].name} ${fmt(100 * s.shares[0].p, 0)}%` : ""}`})))));
    }
    return section("real", "Real images per class",
      el("p", {class: "note", text: `Up to ${R.limits.per_class} per class, validation images first. A segmentation image has no ` +
        `single label: each is grouped by the teacher's dominant class (the class most locations of its label map of the first ` +
        `recorded view take: the index's teacher_top1), and checked against its stored mask's dominant class.`}),
      classLegend(), el("div", {class: "controls"}, overlayControl()), grid);
  }

  // -- charts -------------------------------------------------------------------------------------
  // series: [{name, colour, points: [[x, y], ...]}]; one <circle class="pt"> per point, hover for values
  function lineChart(series, xLabel, yLabel, id) {
    const W = 640, H = 300, L = 60, B = 40, T = 10, Rm = 10;
    const pts = series.flatMap(s => s.points);
    const box = svg("svg", {width: W, height: H, class: "chart", id: id});
    if (!pts.length) { const t = svg("text", {x: 20, y: 30}); t.textContent = "no data"; box.append(t); return box; }
    let [x0, x1] = [Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0]))];
    let [y0, y1] = [Math.min(...pts.map(p => p[1])), Math.max(...pts.map(p => p[1]))];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
    const sx = x => L + (x - x0) / (x1 - x0) * (W - L - Rm), sy = y => H - B - (y - y0) / (y1 - y0) * (H - B - T);
    for (let i = 0; i <= 4; i++) {
      const yv = y0 + (y1 - y0) * i / 4, xv = x0 + (x1 - x0) * i / 4;
      box.append(svg("line", {x1: L, x2: W - Rm, y1: sy(yv), y2: sy(yv), stroke: "#eee"}));
      const ty = svg("text", {x: L - 4, y: sy(yv) + 4, "text-anchor": "end", "font-size": 10}); ty.textContent = fmt(yv, 3); box.append(ty);
      const tx = svg("text", {x: sx(xv), y: H - B + 14, "text-anchor": "middle", "font-size": 10}); tx.textContent = fmt(Math.round(xv)); box.append(tx);
    }
    const xl = svg("text", {x: (L + W) / 2, y: H - 6, "text-anchor": "middle", "font-size": 11}); xl.textContent = xLabel; box.append(xl);
    const yl = svg("text", {x: 12, y: H / 2, "font-size": 11, transform: `rotate(-90 12 ${H / 2})`, "text-anchor": "middle"}); yl.textContent = yLabel; box.append(yl);
    for (const s of series) {
      const g = svg("g", {"data-series": s.name});
      if (s.points.length > 1) g.append(svg("polyline", {fill: "none", stroke: s.colour, "stroke-width": 1.5,
        points: s.points.map(p => `${sx(p[0])},${sy(p[1])}`).join(" ")}));
      for (const p of s.points) {
        const c = svg("circle", {class: "pt", cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: s.colour});
        hover(c, `${s.name}: ${xLabel} ${fmt(p[0])}, ${yLabel} ${fmt(p[1], 4)}`);
        g.append(c);
      }
      box.append(g);
    }
    return box;
  }

  // -- runs ---------------------------------------------------------------------------------------
  function runsSection() {
    const runs = R.runs || [];
    if (!runs.length) return section("runs", "Runs", el("p", {class: "note", text: "No run given (tsd report REL RUN ...)."}));
    const metrics = [];
    for (const r of runs) {
      for (const e of r.train) for (const k of Object.keys(e)) if (typeof e[k] === "number" && !["step", "epoch"].includes(k) && !metrics.includes("train/" + k)) metrics.push("train/" + k);
      for (const e of r.val) for (const k of Object.keys(e)) if (typeof e[k] === "number" && !["step", "epoch"].includes(k) && !metrics.includes("val/" + k)) metrics.push("val/" + k);
    }
    const pick = el("select", {id: "run-metric"}, ...metrics.map(m => el("option", {value: m, text: m})));
    if (metrics.includes("train/loss")) pick.value = "train/loss";
    const on = runs.map(() => true);
    const holder = el("div", {});
    function draw() {
      const [part, key] = pick.value.split("/");
      const series = runs.map((r, i) => ({name: r.name, colour: COLOURS[i % COLOURS.length],
        points: r[part].filter(e => typeof e[key] === "number").map(e => [e.step, e[key]])})).filter((s, i) => on[i]);
      holder.replaceChildren(lineChart(series, "step", pick.value, "run-chart"));
    }
    const legend = el("div", {class: "legend"}, ...runs.map((r, i) => el("label", {style: `color:${COLOURS[i % COLOURS.length]}`},
      el("input", {type: "checkbox", checked: "", class: "run-toggle", oninput: ev => { on[i] = ev.target.checked; draw(); }}), r.name)));
    pick.addEventListener("input", draw);
    draw();
    const keys = [...new Set(runs.flatMap(r => Object.keys(r.metrics)))];
    const finals = table(["run", "mode", "student", ...keys], runs.map(r => [r.name, r.mode || "—", r.arch || "—", ...keys.map(k => r.metrics[k])]));
    const details = runs.filter(r => r.confusion).map(r => {
      const c = R.release.classes;
      const conf = el("table", {class: "confusion"});
      const max = Math.max(1, ...r.confusion.flat());
      conf.append(el("tr", {}, el("th", {text: "true \\ pred"}), ...c.map((_, j) => el("th", {text: String(j)}))));
      r.confusion.forEach((row, i) => conf.append(el("tr", {}, el("th", {text: `${i} ${c[i]}`}),
        ...row.map(v => el("td", {text: v ? String(v) : "", style: `background: rgba(31,119,180,${v / max})`})))));
      const dis = r.disagreements.slice(0, R.limits.disagreements).map(d => el("div", {class: "real-card"},
        byUid[d.uid] ? el("a", {href: "#sample/" + d.uid}, el("img", {src: byUid[d.uid].thumb, alt: d.uid})) : el("div", {class: "note", text: d.uid.slice(0, 8)}),
        el("div", {text: `true ${c[d.label]}`}), el("div", {text: `student ${c[d.pred]}`}), el("div", {text: `teacher ${c[d.teacher]}`})));
      return el("details", {open: ""}, el("summary", {text: `${r.name}: per class, confusion, disagreements with the teacher`}),
        table(["class", "n", "top-1"], r.per_class.map(p => [p.class, p.n, p.top1])), conf,
        el("p", {text: `${r.disagreements_total} validation images where student and teacher disagree (images shown when they are in the report's sample):`}),
        el("div", {class: "real-grid"}, ...dis));
    });
    if (SEG) {   // the headline (mIoU) on its own chart, and each run's per-class IoU beside the teacher's
      const key = SEG.headline.key, label = SEG.headline.label;
      const series = runs.map((r, i) => ({name: r.name, colour: COLOURS[i % COLOURS.length],
        points: r.val.filter(e => typeof e[key] === "number").map(e => [e.step, e[key]])}));
      const teacher = runs.find(r => r.val.some(e => typeof e["teacher_" + key] === "number"));
      if (teacher) series.push({name: "teacher (its stored logits)", colour: "#444",
        points: teacher.val.filter(e => typeof e["teacher_" + key] === "number").map(e => [e.step, e["teacher_" + key]])});
      const perClass = runs.filter(r => r.per_class_iou).map(r => el("details", {open: ""},
        el("summary", {text: `${r.name}: per-class IoU, the student beside the teacher (${r.per_class_iou_from})`}),
        table(["class", "student IoU", "teacher IoU", "probe IoU", ""], r.per_class_iou.map(p => [el("span", {}, swatch(R.release.classes.indexOf(p.class)), p.class),
          p.iou, p.teacher_iou, p.probe_iou, el("span", {class: "bar", style: `width:${80 * (p.iou || 0)}px`})]), "per-class-iou")));
      details.push(el("h3", {text: `Validation ${label}`}), lineChart(series, "step", `val ${label}`, "run-headline-chart"), ...perClass);
    }
    return section("runs", "Runs", el("div", {class: "controls"}, el("label", {}, "metric ", pick)), legend, holder,
      el("h3", {text: "Final metrics (validation)"}), finals, ...details);
  }

  // -- compare ------------------------------------------------------------------------------------
  function compareSection() {
    const cs = R.compares || [];
    if (!cs.length) return section("compare", "Compare", el("p", {class: "note", text: "No compare folder given."}));
    return section("compare", "Compare", ...cs.flatMap(c => {
      const values = r => r[c.metric.values] || [];   // the task's metric per seed: val_top1 or val_miou
      const rows = c.rows.map(r => [r.label, r.teacher || "—", `${(100 * r.mean).toFixed(1)} ± ${(100 * r.std).toFixed(1)}`,
        `[${(100 * Math.min(...values(r))).toFixed(1)}, ${(100 * Math.max(...values(r))).toFixed(1)}]`, r.seeds.length, r.steps, r.real_images, r.mix_images]);
      const W = 640, rowH = 26, L = 220, H = rowH * c.rows.length + 30;
      const chart = svg("svg", {width: W, height: H, class: "chart", id: "compare-chart"});
      const xmax = Math.max(0.01, ...c.rows.map(r => r.mean + r.std));
      const sx = v => L + v / xmax * (W - L - 20);
      c.rows.forEach((r, i) => {
        const y = 10 + i * rowH;
        const t = svg("text", {x: L - 6, y: y + 14, "text-anchor": "end", "font-size": 11}); t.textContent = r.label; chart.append(t);
        const bar = svg("rect", {x: L, y: y + 3, width: sx(r.mean) - L, height: rowH - 8, fill: COLOURS[i % COLOURS.length], class: "pt"});
        hover(bar, `${r.label}: ${(100 * r.mean).toFixed(2)} ± ${(100 * r.std).toFixed(2)} (seeds: ${values(r).map(v => (100 * v).toFixed(1)).join(", ")})`);
        chart.append(bar, svg("line", {x1: sx(r.mean - r.std), x2: sx(r.mean + r.std), y1: y + rowH / 2, y2: y + rowH / 2, stroke: "#000"}));
      });
      return [el("h3", {text: `${c.name}: ${c.student} students`}),
        el("p", {class: "note", text: `val ${c.metric.label} (%) mean ± ${c.std}; brackets: lowest and highest seed`}),
        table(["row", "teacher", `val ${c.metric.label} (%)`, "seed range", "seeds", "steps", "real images", "mix images"], rows, "compare-table"), chart];
    }));
  }

  // -- generation ---------------------------------------------------------------------------------
  function generationSection() {
    const g = R.generation;
    const rows = g.nodes.map(n => [n.node, n.host || "—", n.devices.join(", "), n.shards, n.samples, n.seconds, n.seconds_per_shard, n.failures]);
    const series = g.nodes.map((n, i) => ({name: n.node, colour: COLOURS[i % COLOURS.length],
      points: g.shards.map((s, j) => [j, s.seconds, s.node]).filter(p => p[2] === n.node && typeof p[1] === "number").map(p => [p[0], p[1]])}));
    return section("generation", "Generation",
      el("p", {class: "note", text: "From each shard's stats file: where it was made and how long it took."}),
      table(["node", "host", "device", "shards", "samples", "seconds", "s / shard", "failed samples"], rows),
      lineChart(series, "shard (release order)", "seconds", "generation-chart"));
  }

  // -- a sample's page ----------------------------------------------------------------------------
  function samplePage(uid) {
    const s = byUid[uid];
    const page = document.getElementById("sample-page");
    if (!s) { page.replaceChildren(el("p", {class: "bad", text: `${uid}: not in this report`})); return; }
    if (SEG) { samplePageSeg(s, page); return; }
    const viewer = el("div", {class: "viewer", id: "viewer"}, el("img", {src: s.image, alt: s.uid}));
    s.views.forEach((v, i) => {
      const colour = COLOURS[i % COLOURS.length];
      const b = el("div", {class: "vbox", style: `left:${100 * v.box[0]}%;top:${100 * v.box[1]}%;width:${100 * v.box[2]}%;` +
        `height:${100 * v.box[3]}%;border-color:${colour}`}, el("span", {text: `${i}${v.flip ? " ⇋" : ""}: ${v.top1_name} ${fmt(v.p, 2)}`}));
      viewer.append(b);
    });
    const facts = [["uid", s.uid], ["kind / split", `${s.kind} / ${s.split}`], ["shard", s.shard], ["seed", s.seed],
      ["label", s.label >= 0 ? `${s.label} ${s.class_name}` : "— (a mix carries no label)"],
      ["stored size", `${s.width} × ${s.height}`], ["teacher entropy", s.entropy]];
    if (s.parents.length) facts.push(["weight of A", s.weight], ["generator", s.generator || "—"]);
    page.replaceChildren(...present(el("p", {}, el("a", {href: "#mixes", text: "← back"})),
      el("h2", {text: `Sample ${s.uid}`}), table(null, facts),
      s.parents.length ? el("div", {class: "mix-card", style: "width:auto"}, el("div", {class: "imgs"},
        ...s.parents.map((p, i) => thumb(p, `parent ${"AB"[i]}`)))) : null,
      el("h3", {text: `${s.views.length} recorded views (boxes; ⇋ = flipped) with the teacher's top-1 on each`}), viewer,
      table(["view", "x", "y", "w", "h", "flip", "teacher top-1", "p"], s.views.map((v, i) =>
        [i, v.box[0], v.box[1], v.box[2], v.box[3], v.flip ? "yes" : "no", v.top1_name, v.p])),
      el("h3", {text: "Teacher top-5 (mean over the views)"}), table(["class", "p"], s.top5.map(t => [t.name, t.p]))));
  }

  // side by side: the image, its stored mask (a real image), the teacher's label map of each recorded view
  function samplePageSeg(s, page) {
    const panel = (caption, layer, box, colour) => {
      const viewer = el("div", {class: "viewer"}, el("img", {src: s.image, alt: s.uid}));
      if (layer) viewer.append(el("img", {class: "layer layer-page", src: layer, alt: caption, style: `opacity:${SEG.alpha}`}));
      if (box) viewer.append(el("div", {class: "vbox", style: `left:${100 * box[0]}%;top:${100 * box[1]}%;width:${100 * box[2]}%;` +
        `height:${100 * box[3]}%;border-color:${colour}`}));
      return el("figure", {class: "panel"}, viewer, el("figcaption", {text: caption}));
    };
    const panels = [panel("image", null)];
    if (s.layers["mask-page"]) panels.push(panel("stored mask", s.layers["mask-page"]));
    s.views.forEach((v, i) => panels.push(panel(`view ${i}${v.flip ? " ⇋" : ""}: the teacher's labels (dominant ${v.top1_name} ` +
      `${fmt(100 * v.p, 0)}%)`, s.layers["view" + i], v.box, COLOURS[i % COLOURS.length])));
    const facts = [["uid", s.uid], ["kind / split", `${s.kind} / ${s.split}`], ["shard", s.shard], ["seed", s.seed],
      ["stored size", `${s.width} × ${s.height}`], ["teacher's dominant class", R.release.classes[s.teacher_top1]],
      ["teacher entropy (mean per location)", s.entropy], ["teacher confidence (mean per location)", s.confidence]];
    if (s.mask_shares) facts.push(["mask's dominant class", s.mask_top1 === null ? "—" : R.release.classes[s.mask_top1]]);
    if (s.parents.length) facts.push(["weight of A", s.weight], ["generator", s.generator || "—"]);
    page.replaceChildren(...present(el("p", {}, el("a", {href: "#mixes", text: "← back"})),
      el("h2", {text: `Sample ${s.uid}`}), table(null, facts),
      s.parents.length ? el("div", {class: "mix-card", style: "width:auto"}, el("div", {class: "imgs"},
        ...s.parents.map((p, i) => thumb(p, `parent ${"AB"[i]}`)))) : null,
      el("h3", {text: `The image${s.mask_shares ? ", its mask" : ""} and the teacher's label map on each of its ${s.views.length} ` +
        `recorded views (box; ⇋ = flipped; outside the box: not seen by the teacher)`}), classLegend(),
      el("div", {class: "panels", id: "seg-panels"}, ...panels),
      table(["view", "x", "y", "w", "h", "flip", "dominant class", "pixel share"], s.views.map((v, i) =>
        [i, v.box[0], v.box[1], v.box[2], v.box[3], v.flip ? "yes" : "no", v.top1_name, v.p])),
      el("h3", {text: "Classes of the teacher's map of the first view, by pixel share"}), shareList(s.shares),
      s.mask_shares ? el("h3", {text: "Classes of the stored mask, by pixel share"}) : null, s.mask_shares ? shareList(s.mask_shares) : null));
  }

  function route() {
    const m = location.hash.match(/^#sample\/([0-9a-f]+)$/);
    document.getElementById("main").hidden = !!m;
    document.getElementById("sample-page").hidden = !m;
    if (m) { samplePage(m[1]); window.scrollTo(0, 0); }
  }

  if (SEG) document.body.dataset.overlay = "teacher";
  document.getElementById("title").textContent = `tsdistill report: ${R.release.name}`;
  document.title = `tsdistill report: ${R.release.name}`;
  document.getElementById("main").append(releaseSection(), mixesSection(), realSection(), runsSection(),
    compareSection(), generationSection(),
    el("p", {class: "note", text: `Built ${R.built} by ${R.tool} in ${fmt(R.seconds, 1)} s.`}));
  window.addEventListener("hashchange", route);
  route();
})();
