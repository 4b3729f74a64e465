// What the traces pages share: the API call (with the token the page was opened with), the field colours, and the
// answer drawn token by token (each token shaded by its advantage, underlined in its field's colour).
export const params = new URLSearchParams(location.search);
export const run = +(params.get("run") || 0);
const token = params.get("token");

export async function api(path) {
  const response = await fetch(path, token ? {headers: {authorization: `Bearer ${token}`}} : {});
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail);
  return body;
}

export function link(path, extra = {}) {  // a page of this viewer, keeping the token
  const query = new URLSearchParams({...(token ? {token} : {}), ...extra});
  return `${path}?${query}`;
}

export const FIELD_COLOURS = {answer: "#8e44ad", description: "#7f8c8d", bbox2d: "#2980b9", bbox3d: "#c0392b",
  kpts2d: "#16a085", kpts3d: "#d35400"};

export const escape = text => text.replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);

export const number = (value, digits = 3) => value === null || value === undefined ? "–" : (+value).toFixed(digits);

// The response, one <span class="token"> per token: background green (positive advantage) or red (negative), its
// opacity the advantage over the sample's largest |advantage|; underlined in the colour of the field it wrote.
export function answer(sample) {
  const advantages = sample.advantages || sample.tokens.map(() => 0);
  const scale = Math.max(1e-9, ...advantages.map(Math.abs));
  return sample.tokens.map((text, k) => {
    const a = advantages[k], field = sample.token_fields[k];
    const shade = a >= 0 ? `rgba(39,174,96,${(a / scale).toFixed(3)})` : `rgba(231,76,60,${(-a / scale).toFixed(3)})`;
    const line = field ? `border-bottom:3px solid ${FIELD_COLOURS[field]}` : "border-bottom:3px solid transparent";
    const diff = sample.logprobs.learner[k] - sample.logprobs.rollout[k];
    const title = `token ${k} ${JSON.stringify(text)} | ${field || "background"} | advantage ${number(a, 4)} | ` +
      `logp rollout ${number(sample.logprobs.rollout[k], 4)} learner ${number(sample.logprobs.learner[k], 4)} (${number(diff, 6)})`;
    return `<span class="token" data-field="${field}" data-advantage="${a}" style="background:${shade};${line}" ` +
      `title="${escape(title)}">${escape(text)}</span>`;
  }).join("");
}

export function rewards(sample) {
  const cells = Object.entries(sample.rewards).map(([name, value]) => {
    const bad = sample.invalid[name] ? ' class="invalid" title="did not parse"' : "";
    return `<tr><th style="color:${FIELD_COLOURS[name] || "inherit"}">${name}</th><td${bad}>${number(value)}</td></tr>`;
  });
  return `<table class="rewards">${cells.join("")}</table>`;
}

export function legend() {
  return Object.entries(FIELD_COLOURS).map(([name, colour]) =>
    `<span style="border-bottom:3px solid ${colour}">${name}</span>`).join(" ") +
    ' &nbsp; advantage: <span style="background:rgba(39,174,96,.8)">positive</span> ' +
    '<span style="background:rgba(231,76,60,.8)">negative</span>';
}
