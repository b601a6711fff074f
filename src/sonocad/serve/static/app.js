// The viewer page: upload one image to /api/predict, show its overlay, heatmap and numbers;
// draw boxes on it to outline lesions (LiteMedSAM, /api/results/{id}/outline); in annotation
// mode, step through a folder's images and save each one's class and outline.
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
let resultId = null; // the shown upload's (or annotation image's) result
let frameNumber = 1;
let imageName = "image"; // the shown file's name without its suffix: the mask's download name
let dicomUpload = false; // a single-frame DICOM upload: its SEG and SR can be downloaded
let boxesOn = false; // the server can outline boxes (the interactive extra)
let maxBoxes = 20;
// The boxes drawn on the shown frame (image pixels), whose outline is shown when source is
// "box"; boxResult is that outline's answer. Only the latest request's answer is shown.
let boxes = [];
let source = "model";
let boxResult = null;
let boxUrls = [];
let boxRequest = 0;
let drag = null; // the box being dragged: its start (image pixels) and its pointer's id
// Annotation mode: the images, the one shown (index) and the class chosen for it.
let items = null;
let itemIndex = null;
let itemLabel = null;

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
  const headers = { ...options.headers, ...(token ? { Authorization: `Bearer ${token}` } : {}) };
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
  boxesOn = model.boxes;
  maxBoxes = model.max_boxes;
  $("boxes-note").textContent = model.boxes ? "" : `No boxes: ${model.boxes_note}`;
  if (model.annotate) await startAnnotation();
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
    imageName = file.name.replace(/\.[^.]*$/, "") || "image";
    dicomUpload = result.format === "DICOM" && result.frames.length === 1;
    $("image-info").textContent = `${result.format} · ${result.width} × ${result.height} px`;
    await showAnalysis(result);
  } catch (error) {
    showError(error, `${file.name} could not be analysed`);
  } finally {
    $("busy").hidden = true;
  }
}

// An analysed image (an upload, or an annotation image): its first frame shown.
async function showAnalysis(result) {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  frames = result.frames;
  frameImages = new Map();
  resultId = result.id;
  showFrameControl(result);
  await showFrame(1);
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
  frameNumber = number;
  resetBoxes();
  showImages(overlay, heatmap);
  showResult(frames[number - 1]);
  showBoxControls();
  if (boxesOn) prepareBoxes();
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
  $("legend-boxes").hidden = heatmap || source !== "box";
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

// --- boxes: drawn on the image, each one lesion outlined by the server -----------------------

function resetBoxes() {
  boxes = [];
  source = "model";
  boxResult = null;
  boxRequest += 1; // an answer still on its way is for the old boxes: dropped
  releaseBoxUrls();
}

function releaseBoxUrls() {
  boxUrls.forEach((url) => URL.revokeObjectURL(url));
  boxUrls = [];
}

function showBoxControls() {
  const shown = resultId !== null;
  $("boxbar").hidden = !shown;
  $("boxes-note").hidden = !shown || boxesOn;
  $("use-boxes").disabled = !boxesOn;
  $("stage").classList.toggle("boxing", shown && boxesOn);
  $("legend-boxes").hidden = source !== "box" || view === "heatmap";
  $("use-model").setAttribute("aria-pressed", String(source === "model"));
  $("use-boxes").setAttribute("aria-pressed", String(source === "box"));
  $("box-count").textContent = String(boxes.length);
  $("undo-box").disabled = !boxes.length;
  $("download-mask").disabled = !currentResult().mask_url;
  $("download-dicom").hidden = !dicomUpload || items !== null;
  $("box-hint").textContent = !boxesOn ? "" : boxes.length >= maxBoxes
    ? `At most ${maxBoxes} boxes` : "Drag a box around a lesion to outline it";
}

function currentResult() {
  return source === "box" && boxResult ? boxResult : frames[frameNumber - 1];
}

// The image embedding takes a second or two: made now, while the person looks at the image.
function prepareBoxes() {
  api(`/api/results/${resultId}/prepare`, {
    method: "POST", body: JSON.stringify({ frame: frameNumber }),
    headers: { "Content-Type": "application/json" },
  }).catch(() => {}); // a box drawn later reports any problem
}

async function outlineBoxes() {
  source = "box";
  showBoxControls();
  const request = ++boxRequest;
  $("busy").hidden = false;
  try {
    const response = await api(`/api/results/${resultId}/outline`, {
      method: "POST", body: JSON.stringify({ boxes, frame: frameNumber }),
      headers: { "Content-Type": "application/json" },
    });
    const result = await response.json();
    const urls = await Promise.all([imageUrl(result.overlay_url),
      result.heatmap_url ? imageUrl(result.heatmap_url) : null]);
    if (request !== boxRequest) { // boxes changed meanwhile: a newer answer is coming
      urls.filter(Boolean).forEach((url) => URL.revokeObjectURL(url));
      return;
    }
    releaseBoxUrls();
    boxUrls = urls.filter(Boolean);
    boxResult = result;
    showImages(...urls);
    showResult(result);
  } catch (error) {
    if (request === boxRequest) showError(error, "The boxes could not be outlined");
  } finally {
    if (request === boxRequest) {
      $("busy").hidden = true;
      $("rubber").hidden = true;
      showBoxControls();
    }
  }
}

async function useModel() {
  if (resultId === null || source === "model") return;
  source = "model";
  boxRequest += 1; // an outline still on its way is not shown
  $("busy").hidden = true;
  $("rubber").hidden = true;
  const [overlay, heatmap] = await frameUrls(frameNumber);
  showImages(overlay, heatmap);
  showResult(frames[frameNumber - 1]);
  showBoxControls();
}

function useBoxes() {
  if (resultId !== null && boxesOn && source !== "box") outlineBoxes();
}

function undoBox() {
  if (!boxes.length) return;
  boxes.pop();
  outlineBoxes(); // the last box gone; with none left: no lesion, in the person's word
}

function shownImage() {
  return view === "heatmap" && !$("heatmap").hidden ? $("heatmap") : $("overlay");
}

// Where a pointer is on the image, in its own pixels: the image is scaled to fit the stage
// (object-fit: contain), centred, so the page's pixels map to the image's through one scale.
function imagePoint(event, clamp = true) {
  const img = shownImage();
  const rect = img.getBoundingClientRect();
  const scale = Math.min(rect.width / img.naturalWidth, rect.height / img.naturalHeight);
  const left = rect.left + (rect.width - img.naturalWidth * scale) / 2;
  const top = rect.top + (rect.height - img.naturalHeight * scale) / 2;
  let x = (event.clientX - left) / scale;
  let y = (event.clientY - top) / scale;
  if (clamp) {
    x = Math.min(Math.max(x, 0), img.naturalWidth);
    y = Math.min(Math.max(y, 0), img.naturalHeight);
  }
  return { x, y, scale, left, top, inside: x >= 0 && y >= 0 && x <= img.naturalWidth && y <= img.naturalHeight };
}

function showRubber(a, b) {
  const stage = $("stage").getBoundingClientRect();
  const { scale, left, top } = b;
  const rubber = $("rubber");
  rubber.style.left = `${left - stage.left + Math.min(a.x, b.x) * scale}px`;
  rubber.style.top = `${top - stage.top + Math.min(a.y, b.y) * scale}px`;
  rubber.style.width = `${Math.abs(b.x - a.x) * scale}px`;
  rubber.style.height = `${Math.abs(b.y - a.y) * scale}px`;
  rubber.hidden = false;
}

function wireBoxes() {
  const stage = $("stage");
  stage.addEventListener("pointerdown", (event) => {
    if (!boxesOn || resultId === null || event.button !== 0 || event.target.tagName !== "IMG") return;
    if (boxes.length >= maxBoxes) return;
    const start = imagePoint(event, false);
    if (!start.inside) return;
    event.preventDefault();
    stage.setPointerCapture(event.pointerId);
    drag = { start, pointer: event.pointerId };
  });
  stage.addEventListener("pointermove", (event) => {
    if (drag && event.pointerId === drag.pointer) showRubber(drag.start, imagePoint(event));
  });
  const finish = (event) => {
    if (!drag || event.pointerId !== drag.pointer) return;
    const { start } = drag;
    drag = null;
    const end = imagePoint(event);
    const box = [Math.min(start.x, end.x), Math.min(start.y, end.y),
      Math.max(start.x, end.x), Math.max(start.y, end.y)].map((v) => Math.round(v * 10) / 10);
    if (event.type === "pointercancel" || box[2] - box[0] < 3 || box[3] - box[1] < 3) {
      $("rubber").hidden = true; // a click, not a box
      return;
    }
    boxes.push(box);
    outlineBoxes();
  };
  stage.addEventListener("pointerup", finish);
  stage.addEventListener("pointercancel", finish);
  stage.addEventListener("dragstart", (event) => event.preventDefault());
  $("use-model").addEventListener("click", () => useModel().catch(showError));
  $("use-boxes").addEventListener("click", useBoxes);
  $("undo-box").addEventListener("click", undoBox);
  $("download-mask").addEventListener("click", () => downloadMask().catch(showError));
  $("download-dicom").addEventListener("click", () => downloadDicom().catch(showError));
}

async function downloadMask() {
  const url = currentResult().mask_url;
  if (!url) return;
  const blob = await (await api(url)).blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${imageName}${frames.length > 1 ? `_frame${frameNumber}` : ""}_mask.png`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// The outline shown (the boxes', or the model's) as a DICOM Segmentation and Structured Report
// in the upload's study, zipped: what `sonocad outline --dicom-out` writes.
async function downloadDicom() {
  const response = await api(`/api/results/${resultId}/dicom`, {
    method: "POST", body: JSON.stringify({ boxes: source === "box" ? boxes : null }),
    headers: { "Content-Type": "application/json" },
  });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `${imageName}_seg_sr.zip`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// --- annotation mode: a folder's images, one by one, saved into a data set --------------------

async function startAnnotation() {
  for (const id of ["open-button", "spacing-field", "dropzone"]) $(id).hidden = true;
  $("annotate-card").hidden = false;
  items = await (await api("/api/annotate/items")).json();
  $("dataset-name").textContent = items.dataset;
  renderItems();
  await openItem(items.next ?? 0);
}

function renderItems() {
  $("item-list").replaceChildren(...items.items.map((item) => {
    const entry = document.createElement("li");
    entry.textContent = item.image_id + (item.label ? ` · ${item.label}` : "");
    entry.className = `${item.saved ? "done" : ""} ${item.index === itemIndex ? "current" : ""}`;
    entry.addEventListener("click", () => openItem(item.index).catch(showError));
    return entry;
  }));
  $("item-position").textContent = itemIndex === null ? "" :
    `${itemIndex + 1} of ${items.count} · ${items.done} saved`;
  const current = $("item-list").querySelector(".current");
  if (current) current.scrollIntoView({ block: "nearest" });
}

async function openItem(index) {
  if (index < 0 || index >= items.count) return;
  clearError();
  itemIndex = index;
  renderItems();
  $("busy").hidden = false;
  try {
    const result = await (await api(`/api/annotate/items/${index}`)).json();
    if (index !== itemIndex) return; // another image was chosen meanwhile
    const item = result.item;
    imageName = item.image_id.replace(/^.*\//, "").replace(/\.[^.]*$/, "") || "image";
    $("item-name").textContent = item.image_id;
    $("image-info").textContent = `${result.width} × ${result.height} px`;
    await showAnalysis(result);
    const saved = item.saved;
    chooseLabel(saved ? saved.label : null);
    $("patient-input").value = saved && saved.patient_id ? saved.patient_id : "";
    $("item-spacing-input").value = saved && saved.pixel_spacing_mm ?
      saved.pixel_spacing_mm.join(",") : "";
    const own = !(saved && saved.pixel_spacing_mm) && result.pixel_spacing_mm;
    $("item-spacing-input").placeholder = own ? `the file's: ${own.join(",")}` : "mm, e.g. 0.1";
    showItemStatus(saved);
    if (saved && saved.outline_source === "box" && boxesOn) {
      boxes = saved.boxes;
      await outlineBoxes();
    }
  } finally {
    if (index === itemIndex) $("busy").hidden = true;
  }
}

function showItemStatus(saved) {
  $("item-status").textContent = saved ? `Saved: ${saved.label}` +
    (saved.outline_source ? `, ${saved.outline_source === "box" ? "your boxes'" : "the model's"} outline` : "")
    : "Not saved yet";
  $("item-status").classList.toggle("saved", Boolean(saved));
}

function chooseLabel(label) {
  itemLabel = label;
  for (const button of $("label-choice").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.label === label));
  }
}

async function saveItem() {
  if (itemIndex === null || resultId === null) return;
  if (!itemLabel) {
    showError(new ApiError("Choose a class first: normal (0), benign (1) or malignant (2)"));
    return;
  }
  clearError();
  const index = itemIndex;
  const body = {
    label: itemLabel, patient_id: $("patient-input").value.trim() || null,
    pixel_spacing_mm: $("item-spacing-input").value.trim() || null,
    outline: source, boxes: source === "box" ? boxes : [],
  };
  $("busy").hidden = false;
  try {
    const answer = await (await api(`/api/annotate/items/${index}`, {
      method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
    })).json();
    Object.assign(items.items[index], { saved: true, label: answer.item.saved.label });
    Object.assign(items, { done: answer.done, next: answer.next });
    showItemStatus(answer.item.saved);
    renderItems();
  } catch (error) {
    showError(error, "Not saved");
    return;
  } finally {
    $("busy").hidden = true;
  }
  if (index + 1 < items.count) await openItem(index + 1);
}

function wireAnnotation() {
  $("prev-item").addEventListener("click", () => openItem(itemIndex - 1).catch(showError));
  $("next-item").addEventListener("click", () => openItem(itemIndex + 1).catch(showError));
  $("save-item").addEventListener("click", () => saveItem().catch(showError));
  for (const button of $("label-choice").querySelectorAll("button")) {
    button.addEventListener("click", () => chooseLabel(button.dataset.label));
  }
}

// Keys: boxes everywhere; stepping, classes and saving in annotation mode. Typing in a field
// keeps its keys, but Enter saves there too.
function wireKeys() {
  const labels = { 0: "normal", 1: "benign", 2: "malignant" };
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || !$("token-form").hidden) return;
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName);
    const annotating = items !== null && itemIndex !== null;
    let action = null;
    if (event.key === "Enter" && annotating) {
      action = saveItem; // on a focused button too: its click is prevented
    } else if (typing) {
      return;
    } else if (event.key === "z" || event.key === "Backspace") {
      action = undoBox;
    } else if (event.key === "m") {
      action = useModel;
    } else if (event.key === "b") {
      action = useBoxes;
    } else if (annotating && event.key === "ArrowLeft") {
      action = () => openItem(itemIndex - 1);
    } else if (annotating && event.key === "ArrowRight") {
      action = () => openItem(itemIndex + 1);
    } else if (annotating && event.key in labels) {
      action = () => chooseLabel(labels[event.key]);
    }
    if (!action) return;
    event.preventDefault();
    Promise.resolve(action()).catch(showError);
  });
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
wireBoxes();
wireAnnotation();
wireKeys();
loadModel().catch(showError);
