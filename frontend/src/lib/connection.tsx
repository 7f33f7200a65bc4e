import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState, type ReactNode } from "react";
import { ApiClient, isLoopbackHost, normaliseBaseUrl } from "../api/client";
import type { Health } from "../api/types";
import { clearConnection, loadConnection, saveConnection, type Connection } from "./settings";

export type ConnState = "starting" | "connected" | "disconnected";

interface Ctx {
  state: ConnState;
  connection: Connection | null;
  client: ApiClient | null;
  health: Health | null;
  healthError: string | null;
  /** True when this session connected by itself (dev on loopback, no auth). */
  auto: boolean;
  connect(c: Connection): void;
  disconnect(): void;
  refreshHealth(): Promise<Health | null>;
}

const ConnectionContext = createContext<Ctx | null>(null);

export function useConnection(): Ctx {
  const c = useContext(ConnectionContext);
  if (!c) throw new Error("useConnection outside ConnectionProvider");
  return c;
}

/** The connected client; screens behind the connect gate may assume it exists. */
export function useClient(): ApiClient {
  const { client } = useConnection();
  if (!client) throw new Error("not connected");
  return client;
}

export function ConnectionProvider({ children }: { children: ReactNode }) {
  const [connection, setConnection] = useState<Connection | null>(() => loadConnection());
  const [state, setState] = useState<ConnState>(() => (loadConnection() ? "connected" : "starting"));
  const [health, setHealth] = useState<Health | null>(null);
  const [healthError, setHealthError] = useState<string | null>(null);
  const [auto, setAuto] = useState(false);
  const client = useMemo(
    () => (connection ? new ApiClient({ baseUrl: connection.baseUrl, apiKey: connection.apiKey }) : null),
    [connection],
  );
  const clientRef = useRef(client);
  clientRef.current = client;

  const refreshHealth = useCallback(async () => {
    const c = clientRef.current;
    if (!c) return null;
    try {
      const h = await c.health();
      setHealth(h);
      setHealthError(null);
      return h;
    } catch (e) {
      setHealthError(e instanceof Error ? e.message : String(e));
      return null;
    }
  }, []);

  // First visit: served by `serverless-comfyui dev` on loopback with auth off → connect with no key.
  useEffect(() => {
    if (state !== "starting") return;
    let stop = false;
    (async () => {
      if (isLoopbackHost(window.location.hostname)) {
        try {
          const probe = new ApiClient({ baseUrl: window.location.origin, maxRetries: 0 });
          const h = await probe.health();
          if (!stop && h && h.auth?.required === false) {
            const c = { baseUrl: normaliseBaseUrl(window.location.origin), apiKey: "" };
            saveConnection(c);
            setConnection(c);
            setHealth(h);
            setAuto(true);
            setState("connected");
            return;
          }
        } catch {
          /* not served by dev, or dev needs a key */
        }
      }
      if (!stop) setState("disconnected");
    })();
    return () => {
      stop = true;
    };
  }, [state]);

  useEffect(() => {
    if (state === "connected" && client) void refreshHealth();
  }, [state, client, refreshHealth]);

  const connect = useCallback((c: Connection) => {
    const norm = { baseUrl: normaliseBaseUrl(c.baseUrl), apiKey: c.apiKey.trim(), remember: c.remember === true };
    saveConnection(norm);
    setConnection(norm);
    setAuto(false);
    setState("connected");
  }, []);

  const disconnect = useCallback(() => {
    clearConnection();
    setConnection(null);
    setHealth(null);
    setAuto(false);
    setState("disconnected");
  }, []);

  const value = useMemo<Ctx>(
    () => ({ state, connection, client, health, healthError, auto, connect, disconnect, refreshHealth }),
    [state, connection, client, health, healthError, auto, connect, disconnect, refreshHealth],
  );
  return <ConnectionContext.Provider value={value}>{children}</ConnectionContext.Provider>;
}
