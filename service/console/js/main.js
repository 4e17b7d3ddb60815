// The console's entry point: load the variants once, set up both pages, and show the one the URL's hash names
// (#playground, the default, or #experiment).

import { getJSON } from "./api.js";
import { initExperiment } from "./experiment.js";
import { initPlayground } from "./playground.js";

const VIEWS = ["playground", "experiment"];

async function main() {
  const models = await getJSON("/v1/models");
  if (!models.ok) throw new Error(`GET /v1/models: ${models.status} ${models.body.error}`);
  await initPlayground(models.body.models);
  const experiment = initExperiment(models.body.models);
  const show = () => {
    const wanted = location.hash.slice(1);
    const view = VIEWS.includes(wanted) ? wanted : "playground";
    for (const name of VIEWS) {
      document.getElementById(name).hidden = name !== view;
      const link = document.getElementById(`nav-${name}`);
      if (name === view) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    experiment.setActive(view === "experiment");
  };
  window.addEventListener("hashchange", show);
  show();
  document.body.dataset.ready = "true";
}

main().catch((error) => {
  const fatal = document.getElementById("fatal");
  fatal.textContent = `The console could not start: ${error.message}`;
  fatal.hidden = false;
  throw error;
});
