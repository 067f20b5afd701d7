// The page of `mamba-asr serve`: microphone -> AudioWorklet (16 kHz float32) -> WebSocket
// /v1/stream -> partial and final text; a file -> POST /v1/audio/transcriptions.
"use strict";
const RATE = 16000;
const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
let running = null;

function status(text) { $("status").textContent = text; }
function addFinal(text) {
  if (!text) return;
  $("finals").textContent += ($("finals").textContent ? " " : "") + text;
}

async function startMic() {
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  let ctx;
  try { ctx = new AudioContext({ sampleRate: RATE }); } catch (e) { ctx = new AudioContext(); }
  await ctx.audioWorklet.addModule("static/worklet.js");
  const source = ctx.createMediaStreamSource(media);
  const node = new AudioWorkletNode(ctx, "capture", { processorOptions: { targetRate: RATE } });
  const url = new URL("v1/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (token) url.searchParams.set("token", token);
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: "config", sample_rate: RATE, format: "float32" }));
    node.port.onmessage = (e) => { if (ws.readyState === WebSocket.OPEN) ws.send(e.data.buffer); };
    source.connect(node);
    status("listening (" + ctx.sampleRate + " Hz, sent at 16 kHz)");
  };
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === "partial") $("partial").textContent = msg.text;
    else if (msg.type === "final") { addFinal(msg.text); $("partial").textContent = ""; }
    else if (msg.type === "done") { $("partial").textContent = ""; status("done"); }
    else if (msg.type === "error") status("error: " + msg.message);
  };
  ws.onclose = (e) => { stopMic(false); if (e.code !== 1000) status("closed: " + (e.reason || e.code)); };
  running = { media, ctx, ws, node, source };
  $("mic").textContent = "Stop"; $("mic").classList.add("on");
}

function stopMic(sendEnd = true) {
  if (!running) return;
  const { media, ctx, ws, source } = running;
  running = null;
  source.disconnect();
  media.getTracks().forEach((t) => t.stop());
  ctx.close();
  if (sendEnd && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
  $("mic").textContent = "Start microphone"; $("mic").classList.remove("on");
}

$("mic").onclick = () => {
  if (running) stopMic();
  else startMic().catch((e) => status("microphone: " + e.message));
};

$("upload").onclick = async () => {
  const file = $("file").files[0];
  if (!file) { status("choose a file first"); return; }
  const form = new FormData();
  form.append("file", file);
  form.append("model", "default");
  form.append("response_format", "verbose_json");
  status("transcribing " + file.name + " ...");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch("v1/audio/transcriptions", { method: "POST", body: form, headers });
  const body = await r.json();
  if (!r.ok) { status("error: " + body.error.message); return; }
  addFinal(body.text);
  status(file.name + ": " + body.duration.toFixed(1) + " s of audio");
};

fetch("health").then((r) => r.json()).then((h) => { $("model").textContent = "model: " + h.model; });
