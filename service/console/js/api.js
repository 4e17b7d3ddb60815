// The service's HTTP API as the console uses it. Every call resolves to {ok, status, body}: errors are JSON
// {"error": "..."} with a status that says what went wrong, shown as they come.

export function query(path, params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `${path}?${text}` : path;
}

async function answer(response) {
  let body;
  try {
    body = await response.json();
  } catch {
    body = { error: `${response.status} ${response.statusText}` };
  }
  return { ok: response.ok, status: response.status, body };
}

export async function getJSON(url) {
  return answer(await fetch(url, { headers: { Accept: "application/json" } }));
}

// A 503 with Retry-After is the service shedding load for a moment (docs/operations.md): the console waits as it
// asks, up to RETRIES times, before it shows the refusal.
const RETRIES = 2;
const LONGEST_WAIT_S = 5;

export async function postImage(url, image) {
  const headers = { "Content-Type": image.type || "application/octet-stream" };
  for (let attempt = 0; ; attempt += 1) {
    const response = await fetch(url, { method: "POST", headers, body: image });
    const retryAfter = response.headers.get("Retry-After");
    if (response.status !== 503 || retryAfter === null || attempt === RETRIES) return answer(response);
    const seconds = Number.isFinite(Number(retryAfter)) ? Number(retryAfter) : 1; // (an HTTP date: one second)
    await new Promise((resolve) => setTimeout(resolve, Math.min(Math.max(seconds, 0), LONGEST_WAIT_S) * 1000));
  }
}
