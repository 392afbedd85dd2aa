// Service worker: precaches the app shell, Pyodide and runtime_py (the list and the version are
// filled in by the build), serves them cache-first so the app starts offline after one visit.
// Model packages live in the worker's own cache, verified by sha256: MODEL_CACHE of messages.js,
// spelled out here because a classic service worker cannot import an ES module.
"use strict";
const VERSION = "__BUILD__";
const SHELL = __SHELL__;
const CACHE = `lutlm-app-${VERSION}`;

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys().then((keys) => Promise.all(
    keys.filter((k) => k.startsWith("lutlm-app-") && k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin || event.request.method !== "GET") return;
  event.respondWith(caches.open(CACHE).then(async (cache) => {
    const hit = await cache.match(event.request, { ignoreSearch: true });
    if (hit) return hit;
    try {
      return await fetch(event.request);
    } catch (err) {
      const models = await caches.open("lutlm-models-v1");
      const cached = await models.match(event.request);
      if (cached) return cached;
      throw err;
    }
  }));
});
