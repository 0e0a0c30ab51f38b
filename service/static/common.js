// Shared helpers of the rsir pages: the app's base path and the error banner.
"use strict";

const RSIR_BASE = document.body.dataset.base || "";

/** Text of a FastAPI error body: {"detail": "..."} or a list of validation errors. */
function rsirDetail(body, status) {
  if (body && typeof body === "object" && "detail" in body) {
    const d = body.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d.map((e) => (e && e.msg ? `${(e.loc || []).join(".")}: ${e.msg}` : String(e))).join("; ");
    }
    return JSON.stringify(d);
  }
  return `request failed with HTTP ${status}`;
}

/** Throw an Error whose message is the server's detail when a response is not OK. */
async function rsirCheck(response) {
  if (response.ok) return response;
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  const err = new Error(`${rsirDetail(body, response.status)} (HTTP ${response.status})`);
  err.status = response.status;
  throw err;
}

function rsirShowError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = false;
}

function rsirClearError() {
  const box = document.getElementById("error");
  box.textContent = "";
  box.hidden = true;
}
