// What the browser keeps: the API address and key (local storage, this device only), and the theme.
export interface Connection {
  baseUrl: string;
  apiKey: string;
}

const CONN_KEY = "scui.connection.v1";
const THEME_KEY = "scui.theme.v1";

export type ThemePref = "light" | "dark" | "system";

export function loadConnection(): Connection | null {
  try {
    const raw = localStorage.getItem(CONN_KEY);
    if (!raw) return null;
    const v = JSON.parse(raw) as Partial<Connection>;
    if (typeof v.baseUrl !== "string" || !v.baseUrl) return null;
    return { baseUrl: v.baseUrl, apiKey: typeof v.apiKey === "string" ? v.apiKey : "" };
  } catch {
    return null;
  }
}

export function saveConnection(c: Connection): void {
  localStorage.setItem(CONN_KEY, JSON.stringify(c));
}

export function clearConnection(): void {
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
