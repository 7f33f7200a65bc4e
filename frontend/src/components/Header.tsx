import { Badge, Box, Container, Flex, IconButton, TabNav, Text, Tooltip } from "@radix-ui/themes";
import { MoonIcon, SunIcon } from "@radix-ui/react-icons";
import { useConnection } from "../lib/connection";
import type { Route } from "../lib/router";
import { Logo } from "./Logo";

export function Header({ route, appearance, onToggleTheme }: { route: Route; appearance: "light" | "dark"; onToggleTheme: () => void }) {
  const { state, connection, health, healthError } = useConnection();
  let host = "";
  try {
    host = connection ? new URL(connection.baseUrl).host : "";
  } catch {
    host = connection?.baseUrl ?? "";
  }
  const ok = state === "connected" && !healthError;
  const simulated = health?.comfyui?.mode === "simulated";
  return (
    <Box asChild className="app-header">
      <header>
        <Container size="4" px={{ initial: "3", sm: "5" }}>
          <Flex align="center" justify="between" gap="3" py="3" wrap="wrap">
            <Flex align="center" gap="2" asChild>
              <a href="#/new" className="brand" aria-label="serverless-comfyui, new job">
                <Logo />
                <Text weight="bold" size="3" className="brand-name">
                  serverless<span className="brand-dash">-</span>comfyui
                </Text>
              </a>
            </Flex>
            <Flex align="center" gap="2" className="header-tools">
              {state === "connected" && (
                <Tooltip content={ok ? `Connected to ${host}` : `Cannot reach ${host}`}>
                  <a href="#/connect" className="conn-pill" data-ok={ok} aria-label={ok ? `Connection: ${host}, reachable` : `Connection: ${host}, unreachable`}>
                    <span className="dot" aria-hidden />
                    <Text size="1" className="conn-host">
                      {host}
                    </Text>
                    {simulated && (
                      <Badge color="amber" size="1" variant="soft">
                        simulated
                      </Badge>
                    )}
                  </a>
                </Tooltip>
              )}
              <Tooltip content={appearance === "dark" ? "Light theme" : "Dark theme"}>
                <IconButton variant="ghost" color="gray" onClick={onToggleTheme} aria-label={appearance === "dark" ? "Switch to light theme" : "Switch to dark theme"}>
                  {appearance === "dark" ? <SunIcon width="18" height="18" /> : <MoonIcon width="18" height="18" />}
                </IconButton>
              </Tooltip>
            </Flex>
          </Flex>
          <TabNav.Root aria-label="Main" size="2" className="main-nav">
            <TabNav.Link href="#/new" active={route.name === "new"}>
              New job
            </TabNav.Link>
            <TabNav.Link href="#/history" active={route.name === "history" || route.name === "job"}>
              History
            </TabNav.Link>
            <TabNav.Link href="#/connect" active={route.name === "connect"}>
              Connection
            </TabNav.Link>
          </TabNav.Root>
        </Container>
      </header>
    </Box>
  );
}
