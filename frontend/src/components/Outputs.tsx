import { useEffect, useState } from "react";
import { Badge, Box, Button, Card, Dialog, Flex, IconButton, Inset, Text, VisuallyHidden } from "@radix-ui/themes";
import { Cross2Icon, DownloadIcon, EnterFullScreenIcon, FileIcon, FileTextIcon, SpeakerLoudIcon, VideoIcon } from "@radix-ui/react-icons";
import type { ApiClient } from "../api/client";
import type { Output } from "../api/types";
import { formatBytes } from "../lib/format";

export function kindOf(o: Output): "image" | "video" | "audio" | "text" | "file" {
  const t = String(o.type);
  const ct = o.content_type ?? "";
  // VideoHelperSuite's GIFs are typed `video` but only an <img> plays them.
  if (t === "video" && ct.startsWith("image/")) return "image";
  if (t === "image" || t === "video" || t === "audio" || t === "text") return t;
  if (t !== "latent") {
    if (ct.startsWith("image/")) return "image";
    if (ct.startsWith("video/")) return "video";
    if (ct.startsWith("audio/")) return "audio";
    if (ct.startsWith("text/") || ct === "application/json") return "text";
  }
  return "file";
}

/** Signed URLs need no key; an API-served URL may, so fetch it with the key into a blob URL. */
function useMediaUrl(client: ApiClient, o: Output, onExpired: () => void): { src: string | undefined; onError: () => void } {
  const direct = client.resolve(o.url);
  const [src, setSrc] = useState<string | undefined>(direct);
  const [tried, setTried] = useState(false);
  useEffect(() => {
    setSrc(direct);
    setTried(false);
  }, [direct]);
  useEffect(() => () => {
    if (src?.startsWith("blob:")) URL.revokeObjectURL(src);
  }, [src]);
  const onError = () => {
    if (tried) return;
    setTried(true);
    const expires = o.url_expires_at ? Date.parse(o.url_expires_at) : NaN;
    if (!Number.isNaN(expires) && expires < Date.now() + 5000) {
      onExpired();
      return;
    }
    if (client.hasKey && client.isApiUrl(direct)) {
      fetch(direct, { headers: client.authHeaders(direct), credentials: "omit" })
        .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(String(r.status)))))
        .then((b) => setSrc(URL.createObjectURL(b)))
        .catch(() => onExpired());
    } else {
      onExpired();
    }
  };
  return { src, onError };
}

export function OutputsGallery({ client, outputs, onExpired }: { client: ApiClient; outputs: Output[]; onExpired: () => void }) {
  const media = outputs.filter((o) => kindOf(o) === "image" || kindOf(o) === "video");
  const rest = outputs.filter((o) => !media.includes(o));
  return (
    <Flex direction="column" gap="4">
      {media.length > 0 && (
        <div className="gallery" role="list" aria-label="Images and videos">
          {media.map((o) => (
            <div role="listitem" key={o.id}>
              <MediaCard client={client} o={o} onExpired={onExpired} />
            </div>
          ))}
        </div>
      )}
      {rest.length > 0 && (
        <Flex direction="column" gap="3" role="list" aria-label="Other outputs">
          {rest.map((o) => (
            <div role="listitem" key={o.id}>
              <OtherCard client={client} o={o} onExpired={onExpired} />
            </div>
          ))}
        </Flex>
      )}
    </Flex>
  );
}

function Meta({ o }: { o: Output }) {
  return (
    <Flex justify="between" align="center" gap="2" p="3">
      <Box minWidth="0">
        <Text as="div" size="2" weight="medium" truncate title={o.name}>
          {o.name}
        </Text>
        <Text as="div" size="1" color="gray">
          node #{o.node_id} · {o.content_type} · {formatBytes(o.size_bytes)}
        </Text>
      </Box>
      <DownloadButton href={o.url} name={o.name} />
    </Flex>
  );
}

function DownloadButton({ href, name }: { href: string; name: string }) {
  return (
    <IconButton asChild variant="soft" color="gray" size="2">
      <a href={href} download={name} target="_blank" rel="noopener noreferrer" aria-label={`Download ${name}`}>
        <DownloadIcon />
      </a>
    </IconButton>
  );
}

function MediaCard({ client, o, onExpired }: { client: ApiClient; o: Output; onExpired: () => void }) {
  const { src, onError } = useMediaUrl(client, o, onExpired);
  const kind = kindOf(o);
  const resolved = { ...o, url: src ?? client.resolve(o.url) };
  return (
    <Card size="1" className="output-card" data-output-type={kind}>
      <Inset side="top" clip="padding-box" className="media-inset">
        {kind === "image" ? (
          <Dialog.Root>
            <Dialog.Trigger>
              <button type="button" className="media-button" aria-label={`Enlarge ${o.name}`}>
                <img src={src} alt={`Output ${o.name} from node ${o.node_id}`} className="output-image checker" onError={onError} loading="lazy" data-output-id={o.id} />
                <span className="enlarge" aria-hidden>
                  <EnterFullScreenIcon />
                </span>
              </button>
            </Dialog.Trigger>
            <Dialog.Content maxWidth="min(96vw, 1400px)" className="lightbox">
              <Flex justify="between" align="center" mb="3" gap="2">
                <Dialog.Title size="3" mb="0">
                  {o.name}
                </Dialog.Title>
                <Dialog.Close>
                  <IconButton variant="ghost" color="gray" aria-label="Close">
                    <Cross2Icon />
                  </IconButton>
                </Dialog.Close>
              </Flex>
              <VisuallyHidden>
                <Dialog.Description>Full-size output image</Dialog.Description>
              </VisuallyHidden>
              <img src={src} alt={`Output ${o.name}, full size`} className="lightbox-image checker" />
            </Dialog.Content>
          </Dialog.Root>
        ) : (
          <video src={src} controls playsInline preload="metadata" className="output-video" onError={onError} aria-label={`Video ${o.name}`} />
        )}
      </Inset>
      <Meta o={resolved} />
    </Card>
  );
}

function OtherCard({ client, o, onExpired }: { client: ApiClient; o: Output; onExpired: () => void }) {
  const kind = kindOf(o);
  const { src, onError } = useMediaUrl(client, o, onExpired);
  const [text, setText] = useState<string | null>(null);
  useEffect(() => {
    if (kind !== "text" || !src) return;
    let stop = false;
    const url = src;
    fetch(url, { headers: client.authHeaders(url), credentials: "omit" })
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error(String(r.status)))))
      .then((t) => !stop && setText(t.length > 20000 ? t.slice(0, 20000) + "\n…" : t))
      .catch(() => !stop && setText(null));
    return () => {
      stop = true;
    };
  }, [kind, src, client]);
  const Icon = kind === "audio" ? SpeakerLoudIcon : kind === "text" ? FileTextIcon : kind === "video" ? VideoIcon : FileIcon;
  return (
    <Card size="2" className="output-card" data-output-type={kind}>
      <Flex direction="column" gap="3">
        <Flex justify="between" align="center" gap="3">
          <Flex gap="3" align="center" minWidth="0">
            <Icon width="20" height="20" className="muted-icon" />
            <Box minWidth="0">
              <Text as="div" size="2" weight="medium" truncate>
                {o.name}
              </Text>
              <Text as="div" size="1" color="gray">
                node #{o.node_id} · {o.content_type} · {formatBytes(o.size_bytes)} {String(o.type) === "latent" && <Badge size="1">latent</Badge>}
              </Text>
            </Box>
          </Flex>
          <Button asChild variant="soft" size="2">
            <a href={src} download={o.name} target="_blank" rel="noopener noreferrer">
              <DownloadIcon /> Download
            </a>
          </Button>
        </Flex>
        {kind === "audio" && <audio src={src} controls preload="metadata" onError={onError} aria-label={`Audio ${o.name}`} className="output-audio" />}
        {kind === "text" && text !== null && <pre className="output-text">{text}</pre>}
      </Flex>
    </Card>
  );
}
