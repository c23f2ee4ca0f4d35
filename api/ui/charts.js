// A job's metric curves: one uPlot chart per metric family, fed the API's series as they grow.
"use strict";

// A metric belongs to the first family whose pattern its name matches; any other metric gets
// a chart of its own. Charts stand in this order: the families above the "others" mark, then
// the other metrics by name, then the families below it.
const METRIC_FAMILIES = [
  ["loss", /loss|nll/],
  ["reward", /reward|score/],
  ["KL", /(^|_)kl($|_)/],
  ["accuracy", /acc/],
  null,  // the others
  ["throughput", /per_second/],
  ["step time", /seconds$/],
  ["learning rate", /learning_rate/],
];
const OTHERS = METRIC_FAMILIES.indexOf(null);

const SERIES_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
                        "#e377c2", "#7f7f7f"];

function familyOf(name) {
  const family = METRIC_FAMILIES.find((entry) => entry && entry[1].test(name));
  return family ? family[0] : name;
}

function chartOrder(family) {
  const rank = METRIC_FAMILIES.findIndex((entry) => entry && entry[0] === family);
  return [rank === -1 ? OTHERS : rank, family];
}

function before(family, other) {
  const [rank, name] = chartOrder(family);
  const [otherRank, otherName] = chartOrder(other);
  return rank < otherRank || (rank === otherRank && name < otherName);
}

// Tick labels with the digits that tell neighbouring ticks apart (0.00298, not 0.003).
function tickLabels(plot, splits) {
  return splits.map((value) => (value === null ? "" : String(Number(value.toPrecision(4)))));
}

// The y axis's width: room for its longest label.
function labelRoom(plot, labels) {
  const longest = Math.max(1, ...(labels || []).map((label) => String(label).length));
  return 20 + 7 * longest;
}

class MetricCharts {
  constructor(container) {
    this.container = container;
    this.points = new Map();  // metric name -> Map(step -> value)
    this.charts = new Map();  // family -> {figure, plot, names}
  }

  get lastStep() {
    let last = 0;
    for (const byStep of this.points.values()) {
      for (const step of byStep.keys()) last = Math.max(last, step);
    }
    return last;
  }

  // Merge a page of /metrics series ({name, steps, values}) and redraw what changed.
  add(seriesList) {
    const changed = new Set();
    for (const series of seriesList) {
      if (!this.points.has(series.name)) this.points.set(series.name, new Map());
      const byStep = this.points.get(series.name);
      series.steps.forEach((step, i) => byStep.set(step, series.values[i]));
      if (series.steps.length) changed.add(familyOf(series.name));
    }
    for (const family of changed) this.draw(family);
  }

  draw(family) {
    const names = [...this.points.keys()].filter((name) => familyOf(name) === family).sort();
    const steps = [...new Set(names.flatMap((name) => [...this.points.get(name).keys()]))]
      .sort((a, b) => a - b);
    const data = [steps, ...names.map((name) => {
      const byStep = this.points.get(name);
      return steps.map((step) => (byStep.has(step) ? byStep.get(step) : null));
    })];
    let chart = this.charts.get(family);
    if (chart && chart.names.join("\n") !== names.join("\n")) {
      chart.plot.destroy();  // a new metric joined the family: rebuild with its series
      chart.figure.remove();
      chart = undefined;
    }
    if (!chart) {
      chart = this.create(family, names, data);
      this.charts.set(family, chart);
    } else {
      chart.plot.setData(data);
    }
    const count = names.reduce((sum, name) => sum + this.points.get(name).size, 0);
    chart.figure.dataset.points = String(count);
    chart.caption.textContent = `${family} (${count} points, up to step ${steps.at(-1)})`;
  }

  create(family, names, data) {
    const figure = document.createElement("figure");
    figure.className = "chart";
    figure.dataset.family = family;
    const caption = document.createElement("figcaption");
    figure.append(caption);
    const target = document.createElement("div");
    figure.append(target);
    const place = [...this.container.children]
      .find((other) => before(family, other.dataset.family));
    this.container.insertBefore(figure, place || null);
    const room = this.container.clientWidth || 640;
    const columns = room >= 1000 ? 2 : 1;
    const options = {
      width: Math.floor((room - 16 * (columns - 1)) / columns) - 18,  // less gap, padding, border
      height: 220,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { values: tickLabels, size: labelRoom }],
      series: [{ label: "step" }, ...names.map((name, i) => ({
        label: name,
        stroke: SERIES_COLOURS[i % SERIES_COLOURS.length],
        width: 1.5,
        spanGaps: true,  // evaluation metrics come every few steps
        points: { size: 4 },
      }))],
    };
    return { figure, caption, names, plot: new uPlot(options, data, target) };
  }

  clear() {
    for (const chart of this.charts.values()) {
      chart.plot.destroy();
      chart.figure.remove();
    }
    this.charts.clear();
    this.points.clear();
  }
}

window.MetricCharts = MetricCharts;
window.familyOf = familyOf;
