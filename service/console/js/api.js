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

export async function postImage(url, image) {
  const headers = { "Content-Type": image.type || "application/octet-stream" };
  return answer(await fetch(url, { method: "POST", headers, body: image }));
}
