// Sparklines as plain SVG: a series of [time, value] points, and a target as a dashed line.
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

export function sparkline(points, {width = 220, height = 48, target = null, label = ""} = {}) {
  const chart = svg("svg", {width, height, viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img",
                            "aria-label": label});
  const values = points.map((p) => p[1]).filter((v) => Number.isFinite(v));
  if (typeof target === "number") values.push(target);
  if (!points.length || !values.length) {
    const empty = svg("text", {x: 4, y: height / 2 + 4, class: "spark-empty"});
    empty.textContent = "no samples yet";
    chart.append(empty);
    return chart;
  }
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const t0 = points[0][0];
  const t1 = points[points.length - 1][0];
  const x = (t) => (t1 === t0 ? width / 2 : 2 + ((t - t0) / (t1 - t0)) * (width - 4));
  const y = (v) => height - 3 - ((v - lo) / span) * (height - 6);
  if (typeof target === "number") {
    chart.append(svg("line", {x1: 0, x2: width, y1: y(target), y2: y(target), class: "spark-target"}));
  }
  const path = points.filter((p) => Number.isFinite(p[1])).map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)} ${y(p[1]).toFixed(1)}`);
  chart.append(svg("path", {d: path.join(" "), class: "spark-line"}));
  const last = points[points.length - 1];
  chart.append(svg("circle", {cx: x(last[0]), cy: y(last[1]), r: 2.5, class: "spark-last"}));
  return chart;
}
