// The viewer page: upload one image to /api/predict, show its overlay, heatmap and numbers.
// Plain DOM code, no framework and nothing fetched from elsewhere: the page works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "sonocad-token";
const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const percent = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 1 });

let objectUrls = []; // blob: URLs of the shown images, released on the next upload
let frames = []; // the upload's per-frame results; pictures fetched when a frame is shown
let frameImages = new Map(); // frame number -> [overlay, heatmap] blob: URLs
let view = "outline";

// A token may come once in the address (#token=...): the fragment never reaches the server or
// its logs. It is kept for this tab only, and taken out of the address bar.
function takeTokenFromAddress() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname);
  }
}

class ApiError extends Error {}
class TokenNeeded extends ApiError {} // answered by the token form, not the error banner

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch {
    throw new ApiError("The server cannot be reached. Is `sonocad serve` still running?");
  }
  if (response.status === 401) {
    $("token-message").textContent = token ? "That token was not accepted: enter the token the server was started with."
      : "This server needs the token it was started with.";
    $("token-form").hidden = false;
    $("token-input").focus();
    throw new TokenNeeded();
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      detail = (await response.json()).detail || detail;
    } catch { /* not JSON: keep the status line */ }
    throw new ApiError(detail);
  }
  return response;
}

function showError(error, context = "") {
  if (error instanceof TokenNeeded) return;
  const message = error instanceof ApiError ? error.message : `Something went wrong: ${error.message}`;
  $("error-text").textContent = context ? `${context}: ${message}` : message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

async function loadModel() {
  const model = await (await api("/api/model")).json();
  $("model").textContent = `${model.name} · ${model.task} · ${model.backend}`;
  if (model.lesion_threshold !== null) $("threshold").textContent = model.lesion_threshold;
  $("token-form").hidden = true;
}

async function imageUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

async function analyse(file) {
  clearError();
  $("busy").hidden = false;
  try {
    const body = new FormData();
    body.append("file", file);
    const spacing = $("spacing-input").value.trim();
    if (spacing) body.append("spacing", spacing);
    const result = await (await api("/api/predict", { method: "POST", body })).json();
    objectUrls.forEach((url) => URL.revokeObjectURL(url));
    objectUrls = [];
    frames = result.frames;
    frameImages = new Map();
    $("image-info").textContent = `${result.format} · ${result.width} × ${result.height} px`;
    showFrameControl(result);
    await showFrame(1);
  } catch (error) {
    showError(error, `${file.name} could not be analysed`);
  } finally {
    $("busy").hidden = true;
  }
}

// A cine loop or multi-page TIFF: a slider over its frames (the server analysed each).
function showFrameControl(result) {
  const input = $("frame-input");
  input.max = String(frames.length);
  input.value = "1";
  $("frame-count").textContent = String(frames.length);
  $("frames").hidden = frames.length < 2;
  $("frame-note").hidden = !result.frames_note; // frames left out: the server says why
  $("frame-note").textContent = result.frames_note || "";
}

async function frameUrls(number) {
  if (!frameImages.has(number)) {
    const frame = frames[number - 1];
    const urls = await Promise.all([
      imageUrl(frame.overlay_url),
      frame.heatmap_url ? imageUrl(frame.heatmap_url) : null,
    ]);
    objectUrls.push(...urls.filter(Boolean));
    frameImages.set(number, urls);
  }
  return frameImages.get(number);
}

async function showFrame(number) {
  const [overlay, heatmap] = await frameUrls(number);
  $("frame-number").textContent = String(number);
  showImages(overlay, heatmap);
  showResult(frames[number - 1]);
}

function showImages(overlay, heatmap) {
  $("dropzone").hidden = true;
  $("overlay").src = overlay;
  if (heatmap) $("heatmap").src = heatmap;
  else $("heatmap").removeAttribute("src");
  // Outline and heatmap come with segmentation; a classifier's image is shown as it is.
  $("views").hidden = !heatmap;
  $("legend").hidden = !heatmap;
  setView(heatmap ? view : "outline"); // moving through frames keeps the chosen view
}

function setView(chosen) {
  view = chosen;
  const heatmap = view === "heatmap";
  $("overlay").hidden = heatmap;
  $("heatmap").hidden = !heatmap;
  $("show-outline").setAttribute("aria-pressed", String(!heatmap));
  $("show-heatmap").setAttribute("aria-pressed", String(heatmap));
  $("legend-outline").hidden = heatmap;
  $("legend-heatmap").hidden = !heatmap;
}

function showResult(result) {
  showFinding(result);
  showProbabilities(result.class_probabilities, result.final_class || result.predicted_class);
  showMeasurements(result);
}

function showFinding(result) {
  const finding = $("finding");
  finding.classList.remove("muted");
  finding.replaceChildren();
  const dot = document.createElement("span");
  let text;
  if (result.lesion_detected !== null) {
    dot.className = `dot ${result.lesion_detected ? "positive" : "negative"}`;
    text = result.lesion_detected ? "Lesion detected" : "No lesion detected";
  } else {
    dot.className = "dot neutral";
    text = `Predicted: ${result.predicted_class} ` +
      `(${percent.format(result.class_probabilities[result.predicted_class])})`;
  }
  finding.append(dot, text);
  // The call reconciled with the outline, and the model's own "do not trust this one" flag.
  if (result.final_class) {
    const call = document.createElement("div");
    call.id = "final-call";
    call.textContent = `Call: ${result.final_class}` +
      (result.decision_reason ? ` (${result.decision_reason})` : "");
    finding.append(call);
  }
  if (result.low_confidence) {
    const flag = document.createElement("div");
    flag.id = "low-confidence";
    flag.className = "flag";
    flag.textContent = `Low confidence (uncertainty ${result.uncertainty.toFixed(2)}): ` +
      "read this image yourself";
    finding.append(flag);
  }
}

function showProbabilities(probabilities, predicted) {
  $("probabilities-card").hidden = !probabilities;
  if (!probabilities) return;
  const rows = Object.entries(probabilities).map(([name, p]) => {
    const item = document.createElement("li");
    item.className = name === predicted ? "top" : "";
    const label = document.createElement("div");
    label.className = "bar-label";
    const nameText = document.createElement("span");
    nameText.textContent = name;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent.format(p);
    label.append(nameText, value);
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    item.append(label, track);
    return item;
  });
  $("probabilities").replaceChildren(...rows);
}

function withMm(px, mm, pxUnit, mmUnit) {
  if (px === null) return "—";
  const inPx = `${number.format(px)} ${pxUnit}`;
  return mm === null ? inPx : `${number.format(mm)} ${mmUnit} (${inPx})`;
}

function showMeasurements(result) {
  const spacing = result.pixel_spacing_mm;
  const facts = [
    ["Image size", `${result.width} × ${result.height} px`],
    ["Pixel spacing", spacing ? `${spacing.map((s) => s.toPrecision(3)).join(" × ")} mm` : "unknown"],
  ];
  if (result.instances) { // a detector: each found lesion with its class and score
    facts.unshift(["Lesions found", result.instances.length ? result.instances.map(
      (found, i) => `${i + 1}: ${found.label} ${found.score.toFixed(2)}`).join(", ") : "none"]);
  }
  if (result.lesions) { // each lesion on its own, main first, as numbered on the overlay
    const many = result.lesions.length > 1;
    facts.unshift(["Lesions", result.lesions.length ? String(result.lesions.length) : "none"],
      ...result.lesions.flatMap((lesion) => {
        const name = many ? `Lesion ${lesion.number}` : "Lesion";
        return [
          [`${name} area`, withMm(lesion.area_px, lesion.area_mm2, "px", "mm²")],
          [`${name} diameters`, `${withMm(lesion.diameter_px, lesion.diameter_mm, "px", "mm")} × ${
            withMm(lesion.perpendicular_px, lesion.perpendicular_mm, "px", "mm")}`],
        ];
      }));
  }
  $("measurements").replaceChildren(...facts.flatMap(([name, value]) => {
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    detail.textContent = value;
    return [term, detail];
  }));
  $("spacing-note").hidden = Boolean(spacing) || result.lesion_detected !== true;
  $("measurements-card").hidden = false;
}

function wireFileInputs() {
  const input = $("file-input");
  input.addEventListener("change", () => {
    if (input.files.length) analyse(input.files[0]);
    input.value = ""; // choosing the same file again still triggers a change
  });
  const stage = $("stage");
  stage.addEventListener("dragover", (event) => {
    event.preventDefault();
    stage.classList.add("dragging");
  });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
  stage.addEventListener("drop", (event) => {
    event.preventDefault();
    stage.classList.remove("dragging");
    if (event.dataTransfer.files.length) analyse(event.dataTransfer.files[0]);
  });
  // A file dropped beside the stage would otherwise open in the tab and leave the viewer.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

function wireControls() {
  $("show-outline").addEventListener("click", () => setView("outline"));
  $("show-heatmap").addEventListener("click", () => setView("heatmap"));
  $("error-close").addEventListener("click", clearError);
  $("frame-input").addEventListener("input", () => {
    showFrame(Number($("frame-input").value)).catch((error) => showError(error));
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    clearError();
    loadModel().catch(showError);
  });
}

takeTokenFromAddress();
wireFileInputs();
wireControls();
loadModel().catch(showError);
