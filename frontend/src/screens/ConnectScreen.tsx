import { useEffect, useState } from "react";
import {
  Badge,
  Box,
  Button,
  Callout,
  Card,
  Checkbox,
  Code,
  DataList,
  Flex,
  Grid,
  Heading,
  IconButton,
  Separator,
  Spinner,
  Text,
  TextField,
} from "@radix-ui/themes";
import { CheckCircledIcon, EyeClosedIcon, EyeOpenIcon, InfoCircledIcon, LockClosedIcon, ReloadIcon } from "@radix-ui/react-icons";
import { ApiClient, normaliseBaseUrl } from "../api/client";
import type { Health } from "../api/types";
import { useConnection } from "../lib/connection";
import { navigate } from "../lib/router";
import { defaultBaseUrl } from "../lib/settings";
import { ErrorCallout } from "../components/ErrorCallout";

export function ConnectScreen() {
  const conn = useConnection();
  const [baseUrl, setBaseUrl] = useState(() => conn.connection?.baseUrl ?? defaultBaseUrl());
  // The key field starts empty unless this browser already stored one: nothing is ever prefilled.
  const [apiKey, setApiKey] = useState(() => conn.connection?.apiKey ?? "");
  const [showKey, setShowKey] = useState(false);
  // Off unless this browser was already told to remember: a key kept on the device is
  // readable by any script that ever runs on this origin.
  const [remember, setRemember] = useState(() => conn.connection?.remember === true);
  const [health, setHealth] = useState<Health | null>(conn.health);
  const [healthErr, setHealthErr] = useState<unknown>(null);
  const [checking, setChecking] = useState(false);
  const [verifying, setVerifying] = useState(false);
  const [verifyErr, setVerifyErr] = useState<unknown>(null);

  const check = async (url = baseUrl) => {
    setChecking(true);
    setHealthErr(null);
    try {
      const h = await new ApiClient({ baseUrl: url, maxRetries: 1 }).health();
      setHealth(h);
    } catch (e) {
      setHealth(null);
      setHealthErr(e);
    } finally {
      setChecking(false);
    }
  };

  useEffect(() => {
    void check();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  const onSubmit = async (ev: React.FormEvent) => {
    ev.preventDefault();
    setVerifying(true);
    setVerifyErr(null);
    try {
      const c = new ApiClient({ baseUrl, apiKey, maxRetries: 1 });
      // A list call proves both reachability and that the key is accepted.
      await c.listJobs({ limit: 1 });
      conn.connect({ baseUrl, apiKey, remember });
      navigate("#/new");
    } catch (e) {
      setVerifyErr(e);
    } finally {
      setVerifying(false);
    }
  };

  const authRequired = health?.auth?.required;

  return (
    <Flex direction="column" gap="5" pt="5">
      <Box>
        <Heading size={{ initial: "7", sm: "8" }} className="hero-title">
          Connect to your stack
        </Heading>
        <Text as="p" color="gray" size="3" mt="2">
          Point this app at a <Code variant="ghost">serverless-comfyui</Code> API, on AWS or <Code variant="ghost">serverless-comfyui dev</Code> on this machine.
        </Text>
      </Box>
      <Grid columns={{ initial: "1", md: "2" }} gap="5" align="start">
        <Card size="3" asChild>
          <form onSubmit={onSubmit} aria-labelledby="connect-heading">
            <Flex direction="column" gap="4">
              <Heading as="h2" size="4" id="connect-heading">
                API
              </Heading>
              <Flex direction="column" gap="1">
                <Text as="label" htmlFor="base-url" size="2" weight="medium">
                  API base URL
                </Text>
                <TextField.Root
                  id="base-url"
                  name="base-url"
                  size="3"
                  value={baseUrl}
                  inputMode="url"
                  autoComplete="url"
                  spellCheck={false}
                  placeholder="https://abc123.execute-api.eu-west-1.amazonaws.com"
                  onChange={(e) => setBaseUrl(e.target.value)}
                  onBlur={() => {
                    const n = normaliseBaseUrl(baseUrl);
                    if (n && n !== baseUrl) setBaseUrl(n);
                    if (n) void check(n);
                  }}
                />
                <Text size="1" color="gray">
                  The <Code variant="ghost">ApiUrl</Code> output of your stack, or <Code variant="ghost">http://127.0.0.1:8787</Code> for dev.
                </Text>
              </Flex>
              <Flex direction="column" gap="1">
                <Text as="label" htmlFor="api-key" size="2" weight="medium">
                  API key {authRequired === false && <Text color="gray" weight="regular">(not needed here)</Text>}
                </Text>
                <TextField.Root
                  id="api-key"
                  name="api-key"
                  size="3"
                  type={showKey ? "text" : "password"}
                  value={apiKey}
                  autoComplete="off"
                  spellCheck={false}
                  placeholder={authRequired === false ? "Leave empty" : "scui_…"}
                  onChange={(e) => setApiKey(e.target.value)}
                >
                  <TextField.Slot>
                    <LockClosedIcon />
                  </TextField.Slot>
                  <TextField.Slot>
                    <IconButton type="button" size="1" variant="ghost" color="gray" onClick={() => setShowKey((s) => !s)} aria-label={showKey ? "Hide key" : "Show key"} aria-pressed={showKey}>
                      {showKey ? <EyeClosedIcon /> : <EyeOpenIcon />}
                    </IconButton>
                  </TextField.Slot>
                </TextField.Root>
                <Text size="1" color="gray">
                  Sent only to this API as <Code variant="ghost">Authorization: Bearer</Code>. Kept for this tab only (session storage) unless you tick the box below.
                </Text>
                <Text as="label" size="2" mt="1">
                  <Flex gap="2" align="start">
                    <Checkbox id="remember-key" name="remember-key" checked={remember} onCheckedChange={(v) => setRemember(v === true)} />
                    <span>
                      Remember on this device
                      <Text as="span" size="1" color="gray" style={{ display: "block" }}>
                        Keeps the key in this browser's local storage across restarts. Anyone who uses this browser profile, and any script that ever runs on this page's origin, can read it. Leave it off on shared machines.
                      </Text>
                    </span>
                  </Flex>
                </Text>
              </Flex>
              <ErrorCallout error={verifyErr} title="Could not connect" />
              <Flex gap="3" wrap="wrap" align="center">
                <Button type="submit" size="3" disabled={verifying || !baseUrl.trim()}>
                  {verifying ? <Spinner /> : <CheckCircledIcon />} Connect
                </Button>
                {conn.state === "connected" && (
                  <Button type="button" size="3" variant="soft" color="gray" onClick={() => conn.disconnect()}>
                    Forget this connection
                  </Button>
                )}
              </Flex>
              {conn.state === "connected" && conn.connection && (
                <Callout.Root color="green" size="1">
                  <Callout.Icon>
                    <CheckCircledIcon />
                  </Callout.Icon>
                  <Callout.Text>
                    Connected to <strong>{conn.connection.baseUrl}</strong>
                    {conn.auto ? " automatically (local dev, no key needed)." : conn.connection.apiKey ? " with a key." : " without a key."}
                  </Callout.Text>
                </Callout.Root>
              )}
            </Flex>
          </form>
        </Card>
        <HealthPanel health={health} error={healthErr} checking={checking} onRefresh={() => void check()} />
      </Grid>
    </Flex>
  );
}

function Yes({ ok, children }: { ok: boolean | undefined; children: React.ReactNode }) {
  return (
    <Badge color={ok === undefined ? "gray" : ok ? "green" : "red"} variant="soft">
      {children}
    </Badge>
  );
}

export function HealthPanel({ health, error, checking, onRefresh }: { health: Health | null; error: unknown; checking: boolean; onRefresh: () => void }) {
  const w = health?.workers ?? {};
  const cap = health?.capacity;
  const mode = health?.comfyui?.mode;
  return (
    <Card size="3" aria-labelledby="health-heading" asChild>
      <section data-testid="health-panel">
        <Flex direction="column" gap="4">
          <Flex justify="between" align="center">
            <Heading as="h2" size="4" id="health-heading">
              Health
            </Heading>
            <IconButton variant="ghost" color="gray" onClick={onRefresh} aria-label="Check health again" disabled={checking}>
              {checking ? <Spinner /> : <ReloadIcon />}
            </IconButton>
          </Flex>
          {error ? (
            <ErrorCallout error={error} title="The API is not reachable" />
          ) : !health ? (
            <Flex align="center" gap="2">
              <Spinner /> <Text color="gray">Checking…</Text>
            </Flex>
          ) : (
            <>
              <DataList.Root size="2" orientation={{ initial: "vertical", xs: "horizontal" }}>
                <DataList.Item>
                  <DataList.Label minWidth="120px">Backend</DataList.Label>
                  <DataList.Value>
                    <Flex gap="2" align="center" wrap="wrap">
                      <Yes ok={health.status ? health.status === "ok" : true}>{health.status === "ok" || !health.status ? "reachable" : health.status}</Yes>
                      {health.version && <Code variant="ghost">v{health.version}</Code>}
                    </Flex>
                  </DataList.Value>
                </DataList.Item>
                <DataList.Item>
                  <DataList.Label minWidth="120px">ComfyUI</DataList.Label>
                  <DataList.Value>
                    {mode === "real" ? (
                      <Badge color="green" variant="soft">real ComfyUI</Badge>
                    ) : mode === "simulated" ? (
                      <Badge color="amber" variant="soft">simulated (no GPU)</Badge>
                    ) : (
                      <Flex direction="column" gap="1" align="start">
                        <Badge color="gray" variant="soft">
                          {mode ?? "unknown"}
                        </Badge>
                        {health.comfyui?.message && (
                          <Text size="2" color="gray">
                            {health.comfyui.message}
                          </Text>
                        )}
                      </Flex>
                    )}
                  </DataList.Value>
                </DataList.Item>
                <DataList.Item>
                  <DataList.Label minWidth="120px">Workers</DataList.Label>
                  <DataList.Value>
                    <Flex gap="3" wrap="wrap">
                      <Metric label="busy" v={w.busy} />
                      <Metric label="idle" v={w.idle} />
                      <Metric label="starting" v={w.starting} />
                      <Metric label="max" v={w.max} />
                    </Flex>
                  </DataList.Value>
                </DataList.Item>
                <DataList.Item>
                  <DataList.Label minWidth="120px">Queue</DataList.Label>
                  <DataList.Value>
                    <Metric label="waiting" v={health.queue?.depth} />
                  </DataList.Value>
                </DataList.Item>
                <DataList.Item>
                  <DataList.Label minWidth="120px">Capacity</DataList.Label>
                  <DataList.Value>
                    <Flex direction="column" gap="1" align="start">
                      <Yes ok={cap?.state ? cap.state === "ok" : undefined}>{cap?.state ?? "unknown"}</Yes>
                      {cap?.message && (
                        <Text size="2" color="amber">
                          {cap.message}
                        </Text>
                      )}
                    </Flex>
                  </DataList.Value>
                </DataList.Item>
                {health.store && (
                  <DataList.Item>
                    <DataList.Label minWidth="120px">Store</DataList.Label>
                    <DataList.Value>
                      <Flex gap="2" align="center">
                        <Yes ok={health.store.ok}>{health.store.ok === false ? "failing" : "ok"}</Yes>
                        {health.store.kind && <Code variant="ghost">{health.store.kind}</Code>}
                      </Flex>
                    </DataList.Value>
                  </DataList.Item>
                )}
                <DataList.Item>
                  <DataList.Label minWidth="120px">Auth</DataList.Label>
                  <DataList.Value>
                    {health.auth?.required === false ? (
                      <Text size="2">No key needed{health.auth.loopback_default_tenant ? " (loopback, default tenant)" : ""}</Text>
                    ) : health.auth?.required ? (
                      <Text size="2">API key required</Text>
                    ) : (
                      <Text size="2" color="gray">
                        unknown
                      </Text>
                    )}
                  </DataList.Value>
                </DataList.Item>
              </DataList.Root>
              {mode === "simulated" && (
                <>
                  <Separator size="4" />
                  <Flex gap="2" align="start">
                    <InfoCircledIcon className="muted-icon" />
                    <Text size="2" color="gray">
                      Jobs run on the built-in ComfyUI simulator: weightless nodes (EmptyImage, ImageInvert, ImageBlur…) compute real pixels; model nodes give placeholders. Start <Code variant="ghost">dev --comfyui URL</Code> for a real ComfyUI.
                    </Text>
                  </Flex>
                </>
              )}
            </>
          )}
        </Flex>
      </section>
    </Card>
  );
}

function Metric({ label, v }: { label: string; v: number | undefined }) {
  return (
    <Text size="2">
      <Text weight="bold">{v ?? "–"}</Text> <Text color="gray">{label}</Text>
    </Text>
  );
}

