// What the browser keeps: the API address and key, and the theme.
//
// The connection (with its API key) lives in session storage: it is gone when the tab
// closes, and a page that ever ran script on this origin could not read it from another
// tab later. Keeping it across restarts is an explicit opt-in (`remember`), which puts it
// in local storage, where any script that ever runs on this origin can read it.
export interface Connection {
  baseUrl: string;
  apiKey: string;
  /** Keep the connection on this device (local storage) rather than for this tab only. */
  remember?: boolean;
}

const CONN_KEY = "scui.connection.v1";
const THEME_KEY = "scui.theme.v1";

export type ThemePref = "light" | "dark" | "system";

function parseConnection(raw: string | null): Connection | null {
  if (!raw) return null;
  try {
    const v = JSON.parse(raw) as Partial<Connection>;
    if (typeof v.baseUrl !== "string" || !v.baseUrl) return null;
    return { baseUrl: v.baseUrl, apiKey: typeof v.apiKey === "string" ? v.apiKey : "", remember: v.remember === true };
  } catch {
    return null;
  }
}

export function loadConnection(): Connection | null {
  try {
    const session = parseConnection(sessionStorage.getItem(CONN_KEY));
    if (session) return session;
    const stored = parseConnection(localStorage.getItem(CONN_KEY));
    if (stored && !stored.remember) {
      // Written by an older version, which kept every key in local storage without
      // asking: move it to this tab's session and drop the lasting copy.
      localStorage.removeItem(CONN_KEY);
      sessionStorage.setItem(CONN_KEY, JSON.stringify(stored));
    }
    return stored;
  } catch {
    return null;
  }
}

export function saveConnection(c: Connection): void {
  const value = JSON.stringify({ baseUrl: c.baseUrl, apiKey: c.apiKey, remember: c.remember === true });
  sessionStorage.setItem(CONN_KEY, value);
  if (c.remember) localStorage.setItem(CONN_KEY, value);
  else localStorage.removeItem(CONN_KEY);
}

export function clearConnection(): void {
  sessionStorage.removeItem(CONN_KEY);
  localStorage.removeItem(CONN_KEY);
}

export function loadTheme(): ThemePref {
  const v = localStorage.getItem(THEME_KEY);
  return v === "light" || v === "dark" ? v : "system";
}

export function saveTheme(t: ThemePref): void {
  if (t === "system") localStorage.removeItem(THEME_KEY);
  else localStorage.setItem(THEME_KEY, t);
}

/** The API address a fresh visitor starts with: the build's default, else this page's origin. */
export function defaultBaseUrl(): string {
  const fromEnv = (import.meta.env.VITE_DEFAULT_API_URL as string | undefined)?.trim();
  if (fromEnv) return fromEnv.replace(/\/+$/, "");
  return window.location.origin;
}
