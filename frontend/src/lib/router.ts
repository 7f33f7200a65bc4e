import { useEffect, useState } from "react";

// Hash routes (#/new, #/jobs/:id, #/history, #/connect) work under any static host,
// including `serverless-comfyui dev`, without server-side rewrites.
export type Route =
  | { name: "connect" }
  | { name: "new" }
  | { name: "job"; id: string }
  | { name: "history"; params: URLSearchParams };

export function parseHash(hash: string): Route {
  const h = hash.replace(/^#/, "");
  const [path, query = ""] = h.split("?");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) return { name: "job", id: decodeURIComponent(parts[1]) };
  if (parts[0] === "history") return { name: "history", params: new URLSearchParams(query) };
  if (parts[0] === "connect") return { name: "connect" };
  return { name: "new" };
}

export function navigate(to: string): void {
  if (window.location.hash !== to) window.location.hash = to;
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseHash(window.location.hash));
  useEffect(() => {
    const on = () => setRoute(parseHash(window.location.hash));
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}
