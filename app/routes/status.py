"""A small status page listing recent jobs with their state and QA thumbnail.

The page itself contains no data. Its script prompts for an API key, keeps it in the
browser's session storage and reads ``/v1/jobs`` and the QA pictures with it, so the
page needs no cookie and no key in the URL.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["status"])

STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>SATs jobs</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d2430; }
  h1 { font-size: 1.3rem; } .note { color: #8a4b00; }
  table { border-collapse: collapse; margin-top: 1rem; }
  th, td { border-bottom: 1px solid #d5dae1; padding: 0.35rem 0.7rem; text-align: left; vertical-align: middle; }
  td.state-completed { color: #17703a; } td.state-failed { color: #b3261e; } td.state-running { color: #1a5fb4; }
  img.qa { height: 64px; }
  code { font-size: 0.85em; }
</style>
</head>
<body>
<h1>SATs jobs</h1>
<p class="note">Research use only. Not for clinical use.</p>
<form id="key-form">
  <label>API key <input id="key" type="password" autocomplete="off" size="40"></label>
  <button type="submit">Show jobs</button>
</form>
<p id="message" role="status"></p>
<table id="jobs" hidden>
  <thead><tr>
    <th>Created</th><th>State</th><th>Stage</th><th>Series</th><th>GTV (cc)</th><th>Error</th><th>QA</th>
  </tr></thead>
  <tbody></tbody>
</table>
<script>
"use strict";
const keyInput = document.getElementById("key");
const message = document.getElementById("message");
const table = document.getElementById("jobs");
keyInput.value = sessionStorage.getItem("sats-key") || "";

function headers() { return { "Authorization": "Bearer " + sessionStorage.getItem("sats-key") }; }

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function thumbnail(td, url) {
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) return;
  const image = document.createElement("img");
  image.className = "qa";
  image.alt = "QA picture";
  image.src = URL.createObjectURL(await response.blob());
  td.appendChild(image);
}

async function load() {
  const response = await fetch("/v1/jobs?limit=50", { headers: headers() });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    message.textContent = "Cannot list jobs: " + ((body.error && body.error.message) || response.status);
    table.hidden = true;
    return;
  }
  const page = await response.json();
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const job of page.jobs) {
    const row = body.insertRow();
    row.dataset.jobId = job.id;
    cell(row, new Date(job.created_at * 1000).toLocaleString());
    cell(row, job.state, "state-" + job.state);
    cell(row, job.stage);
    const series = cell(row, "");
    const code = document.createElement("code");
    code.textContent = job.series_instance_uid;
    series.appendChild(code);
    cell(row, job.result ? job.result.gtv_volume_cc.toFixed(1) : "");
    cell(row, job.error ? job.error.code + ": " + job.error.message : "");
    const qa = cell(row, "");
    if (job.links.qa_png) thumbnail(qa, job.links.qa_png);
  }
  message.textContent = page.total + " job(s); showing the newest " + page.jobs.length + ".";
  table.hidden = false;
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("sats-key", keyInput.value);
  load();
});
if (keyInput.value) load();
setInterval(() => { if (sessionStorage.getItem("sats-key")) load(); }, 10000);
</script>
</body>
</html>
"""


@router.get("/status", response_class=HTMLResponse, summary="Status page (the page asks for an API key)")
def status_page() -> HTMLResponse:
    return HTMLResponse(STATUS_PAGE)
