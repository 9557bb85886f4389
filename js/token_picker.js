// Token picker for "CLIP Text Encode (Attend-and-Excite)": lists the prompt's words with
// their token positions as the user types, marks the subjects the node will use, and
// toggles a word in the `subjects` field on click. Public extension API only.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_ID = "AttendExciteTextEncode";
const DEBOUNCE_MS = 250;
const STYLE = `
.ae-tokens { font: 12px sans-serif; color: var(--input-text, #ddd); overflow-y: auto; padding: 2px 0; }
.ae-tokens .ae-head { opacity: .7; margin-bottom: 3px; }
.ae-tokens .ae-word { display: inline-flex; align-items: baseline; gap: 3px; margin: 0 3px 3px 0; padding: 1px 5px;
  border: 1px solid #555; border-radius: 4px; background: #2a2a2a; cursor: pointer; user-select: none; }
.ae-tokens .ae-word.ae-chosen { background: #2f6f3a; border-color: #6fdc82; color: #fff; }
.ae-tokens .ae-word.ae-auto { border-style: dashed; }
.ae-tokens .ae-word.ae-modifier { border-color: #d9a441; }
.ae-tokens .ae-word.ae-inert { cursor: default; opacity: .45; }
.ae-tokens .ae-piece + .ae-piece { border-left: 1px solid #888; padding-left: 2px; }
.ae-tokens .ae-pos { font-size: 10px; opacity: .65; }
.ae-tokens .ae-error { color: #ff8a80; margin-top: 3px; }
`;

function addStyle() {
  if (document.getElementById("ae-token-style")) return;
  const style = document.createElement("style");
  style.id = "ae-token-style";
  style.textContent = STYLE;
  document.head.append(style);
}

// The text encoder a loader's `type` makes, as the route names it: Flux's and Chroma's T5, Z-Image's
// Qwen3 (its CLIPLoader type is lumina2), Qwen-Image's Qwen2.5-VL; flux2 loads Mistral (dev) or, from a
// Qwen3 file, Klein's Qwen3.
const ENCODER_OF_TYPE = { flux: "t5", chroma: "t5", lumina2: "qwen3", qwen_image: "qwen25_vl", flux2: "mistral" };

// The encoder whose columns the node's subjects index, from the loader its clip comes from; "clip" for
// a checkpoint (its family is only known once it is loaded: CLIP's columns, as most have).
export function encoderOf(node) {
  const link = node.inputs?.find((i) => i.name === "clip")?.link;
  const source = link != null ? node.graph?.getNodeById(node.graph.links[link]?.origin_id) : null;
  const widget = (name) => String(source?.widgets?.find((w) => w.name === name)?.value ?? "").toLowerCase();
  const encoder = ENCODER_OF_TYPE[widget("type")] ?? "clip";
  return encoder === "mistral" && widget("clip_name").includes("qwen") ? "qwen3_klein" : encoder;
}

async function tokenize(text, subjects, encoder) {
  const response = await api.fetchApi("/attend_excite/tokenize", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text, subjects, encoder }),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

const splitItems = (subjects) => subjects.split(/[,;\n]/).map((s) => s.trim()).filter(Boolean);

// The `subjects` text after a click on `word`: an item naming the word (by text, as one
// word of a compound such as "teddy bear", or by its positions) is taken out, otherwise
// the word is added. An empty field stands for the automatic subjects, so they become
// the starting list.
export function toggleSubject(subjects, chosen, word) {
  const items = splitItems(subjects).length ? splitItems(subjects) : chosen.map((c) => c.text);
  const positions = new Set(word.positions.map(String));
  const names = (item) =>
    item.toLowerCase().split(/\s+/).includes(word.text.toLowerCase()) ||
    item.split("+").every((p) => positions.has(p.trim()));
  const kept = items.filter((item) => !names(item));
  return (kept.length === items.length ? [...items, word.text] : kept).join(", ");
}

function render(container, answer, subjects, onToggle) {
  container.replaceChildren();
  const chosen = new Set(answer.chosen.flatMap((c) => c.positions));
  // Each modifier's positions -> the subject it describes (what the binding losses pair).
  const described = new Map(answer.chosen.flatMap((c) =>
    (c.modifiers ?? []).flatMap((m) => m.positions.map((p) => [p, c.text]))));
  const pairs = answer.chosen.flatMap((c) => (c.modifiers ?? []).map((m) => `${m.text}→${c.text}`));
  const automatic = !splitItems(subjects).length;
  const head = document.createElement("div");
  head.className = "ae-head";
  const count = answer.tokens.filter((t) => t.kind === "piece" || t.kind === "embedding").length;
  head.textContent = `${count} ${answer.tokens_of} tokens · click words to choose subjects` +
    (automatic ? " (now: automatic)" : "") + (pairs.length ? ` · pairs: ${pairs.join(", ")}` : "");
  container.append(head);
  const pieces = new Map(answer.tokens.map((t) => [t.position, t.text]));
  for (const word of answer.words) {
    const chip = document.createElement("span");
    chip.className = "ae-word";
    chip.dataset.positions = word.positions.join("+");
    chip.title = `token position${word.positions.length > 1 ? "s" : ""} ${word.positions.join(", ")}`;
    for (const position of word.positions) {
      const piece = document.createElement("span");
      piece.className = "ae-piece";
      piece.textContent = pieces.get(position);
      chip.append(piece);
    }
    const label = document.createElement("span");
    label.className = "ae-pos";
    label.textContent = word.positions.join("+");
    chip.append(label);
    if (!/\w/.test(word.text)) {
      chip.classList.add("ae-inert");
    } else {
      if (word.positions.some((p) => chosen.has(p))) chip.classList.add("ae-chosen", ...(automatic ? ["ae-auto"] : []));
      const noun = described.get(word.positions[0]);
      if (noun !== undefined) {
        chip.classList.add("ae-modifier");
        chip.title += ` · modifies ${noun}`;
      }
      chip.addEventListener("pointerdown", (event) => event.stopPropagation());
      chip.addEventListener("click", (event) => {
        event.stopPropagation();
        onToggle(word);
      });
    }
    container.append(chip);
  }
  if (answer.error) {
    const error = document.createElement("div");
    error.className = "ae-error";
    error.textContent = answer.error;
    container.append(error);
  }
}

function attachPicker(node) {
  const textWidget = node.widgets?.find((w) => w.name === "text");
  const subjectsWidget = node.widgets?.find((w) => w.name === "subjects");
  if (!textWidget || !subjectsWidget) return;
  addStyle();
  const container = document.createElement("div");
  container.className = "ae-tokens";
  const widget = node.addDOMWidget("token_picker", "ae_tokens", container, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => 70,
  });
  widget.serialize = false;

  let timer = null;
  let requested = 0;
  let answer = null;
  const refresh = async () => {
    const ticket = ++requested;
    const subjects = subjectsWidget.value ?? "";
    try {
      const fresh = await tokenize(textWidget.value ?? "", subjects, encoderOf(node));
      if (ticket !== requested) return;   // a newer edit is on its way
      answer = fresh;
      render(container, answer, subjects, toggle);
    } catch (error) {
      if (ticket === requested) container.textContent = `token list unavailable: ${error.message}`;
    }
  };
  const schedule = () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, DEBOUNCE_MS);
  };
  const toggle = (word) => {
    subjectsWidget.value = toggleSubject(subjectsWidget.value ?? "", answer?.chosen ?? [], word);
    subjectsWidget.callback?.(subjectsWidget.value);
    node.setDirtyCanvas?.(true, true);
    refresh();
  };

  const editor = textWidget.element ?? textWidget.inputEl;
  editor?.addEventListener("input", schedule);
  for (const watched of [textWidget, subjectsWidget]) {
    const previous = watched.callback;
    watched.callback = function (...args) {
      schedule();
      return previous?.apply(this, args);
    };
  }
  const onConnectionsChange = node.onConnectionsChange;
  node.onConnectionsChange = function (...args) {
    schedule();     // another text encoder may index other columns
    return onConnectionsChange?.apply(this, args);
  };
  const onRemoved = node.onRemoved;
  node.onRemoved = function (...args) {
    clearTimeout(timer);
    return onRemoved?.apply(this, args);
  };
  node.aeRefreshTokens = schedule;
  schedule();
}

app.registerExtension({
  name: "attend_excite.token_picker",
  nodeCreated(node) {
    if (node.comfyClass === NODE_ID) attachPicker(node);
  },
  loadedGraphNode(node) {
    // Widget values arrive after nodeCreated when a workflow is loaded.
    if (node.comfyClass === NODE_ID) node.aeRefreshTokens?.();
  },
});
