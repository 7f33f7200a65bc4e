import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { clearConnection, loadConnection, saveConnection } from "./settings";

/** A Storage that keeps its items in a Map, like a browser's. */
class MemoryStorage {
  private items = new Map<string, string>();
  get length() {
    return this.items.size;
  }
  key(i: number) {
    return [...this.items.keys()][i] ?? null;
  }
  getItem(k: string) {
    return this.items.get(k) ?? null;
  }
  setItem(k: string, v: string) {
    this.items.set(k, String(v));
  }
  removeItem(k: string) {
    this.items.delete(k);
  }
  clear() {
    this.items.clear();
  }
}

const KEY = "scui.connection.v1";
let local: MemoryStorage;
let session: MemoryStorage;

beforeEach(() => {
  local = new MemoryStorage();
  session = new MemoryStorage();
  vi.stubGlobal("localStorage", local);
  vi.stubGlobal("sessionStorage", session);
});

afterEach(() => {
  vi.unstubAllGlobals();
});

describe("connection storage", () => {
  it("keeps the API key in session storage, never in local storage, by default", () => {
    saveConnection({ baseUrl: "https://api.example", apiKey: "sck_secret" });
    expect(local.getItem(KEY)).toBeNull();
    expect(session.getItem(KEY)).toContain("sck_secret");
    expect(loadConnection()).toEqual({ baseUrl: "https://api.example", apiKey: "sck_secret", remember: false });
  });

  it("keeps it on the device only when asked to remember", () => {
    saveConnection({ baseUrl: "https://api.example", apiKey: "sck_secret", remember: true });
    expect(local.getItem(KEY)).toContain("sck_secret");
    // A new tab (fresh session storage) finds the remembered connection.
    vi.stubGlobal("sessionStorage", new MemoryStorage());
    expect(loadConnection()).toEqual({ baseUrl: "https://api.example", apiKey: "sck_secret", remember: true });
  });

  it("forgets the lasting copy when remember is turned off", () => {
    saveConnection({ baseUrl: "https://api.example", apiKey: "sck_secret", remember: true });
    saveConnection({ baseUrl: "https://api.example", apiKey: "sck_secret", remember: false });
    expect(local.getItem(KEY)).toBeNull();
  });

  it("moves a key an older version left in local storage into the session", () => {
    local.setItem(KEY, JSON.stringify({ baseUrl: "https://api.example", apiKey: "sck_old" }));
    expect(loadConnection()).toEqual({ baseUrl: "https://api.example", apiKey: "sck_old", remember: false });
    expect(local.getItem(KEY)).toBeNull();
    expect(session.getItem(KEY)).toContain("sck_old");
  });

  it("clears both copies", () => {
    saveConnection({ baseUrl: "https://api.example", apiKey: "sck_secret", remember: true });
    clearConnection();
    expect(local.getItem(KEY)).toBeNull();
    expect(session.getItem(KEY)).toBeNull();
    expect(loadConnection()).toBeNull();
  });
});
