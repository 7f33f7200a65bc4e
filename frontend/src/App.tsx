import { useEffect, useState } from "react";
import { Box, Container, Flex, Spinner, Text, Theme } from "@radix-ui/themes";
import { ConnectionProvider, useConnection } from "./lib/connection";
import { navigate, useRoute } from "./lib/router";
import { loadTheme, saveTheme, type ThemePref } from "./lib/settings";
import { Header } from "./components/Header";
import { ConnectScreen } from "./screens/ConnectScreen";
import { NewJobScreen } from "./screens/NewJobScreen";
import { JobScreen } from "./screens/JobScreen";
import { HistoryScreen } from "./screens/HistoryScreen";

function useSystemDark(): boolean {
  const [dark, setDark] = useState(() => window.matchMedia?.("(prefers-color-scheme: dark)").matches ?? false);
  useEffect(() => {
    const mq = window.matchMedia?.("(prefers-color-scheme: dark)");
    if (!mq) return;
    const on = () => setDark(mq.matches);
    mq.addEventListener("change", on);
    return () => mq.removeEventListener("change", on);
  }, []);
  return dark;
}

export function App() {
  const [pref, setPref] = useState<ThemePref>(() => loadTheme());
  const systemDark = useSystemDark();
  const appearance = pref === "system" ? (systemDark ? "dark" : "light") : pref;
  useEffect(() => {
    document.documentElement.style.colorScheme = appearance;
  }, [appearance]);
  const toggle = () => {
    const next: ThemePref = appearance === "dark" ? "light" : "dark";
    setPref(next);
    saveTheme(next);
  };
  return (
    <Theme appearance={appearance} accentColor="violet" grayColor="mauve" radius="large" scaling="100%">
      <ConnectionProvider>
        <Shell appearance={appearance} onToggleTheme={toggle} />
      </ConnectionProvider>
    </Theme>
  );
}

function Shell({ appearance, onToggleTheme }: { appearance: "light" | "dark"; onToggleTheme: () => void }) {
  const route = useRoute();
  const { state } = useConnection();

  useEffect(() => {
    if (state === "disconnected" && route.name !== "connect") navigate("#/connect");
  }, [state, route.name]);

  useEffect(() => {
    const titles: Record<string, string> = { connect: "Connect", new: "New job", job: "Job", history: "History" };
    document.title = `${titles[route.name]} · serverless-comfyui`;
  }, [route.name]);

  let body;
  if (state === "starting") {
    body = (
      <Flex align="center" justify="center" gap="3" py="9" role="status">
        <Spinner size="3" />
        <Text color="gray">Looking for the API…</Text>
      </Flex>
    );
  } else if (route.name === "connect" || state !== "connected") {
    body = <ConnectScreen />;
  } else if (route.name === "job") {
    body = <JobScreen key={route.id} id={route.id} />;
  } else if (route.name === "history") {
    body = <HistoryScreen params={route.params} />;
  } else {
    body = <NewJobScreen />;
  }

  return (
    <Box className="app-bg" minHeight="100vh">
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <Header route={route} appearance={appearance} onToggleTheme={onToggleTheme} />
      <Container size="4" px={{ initial: "3", sm: "5" }} pb="9">
        <main id="main" tabIndex={-1}>
          {body}
        </main>
      </Container>
    </Box>
  );
}
