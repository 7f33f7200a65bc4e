import { blake3 } from "@noble/hashes/blake3.js";
import { bytesToHex } from "@noble/hashes/utils.js";
import type { ApiClient, UploadProgress } from "../api/client";
import type { Asset } from "../api/types";

export function blake3Hash(bytes: Uint8Array): string {
  return `blake3:${bytesToHex(blake3(bytes))}`;
}

export function safeFileName(name: string): string {
  const base = name.split(/[\\/]/).pop() || "image.png";
  return base.replace(/[^\w.\- ]+/g, "_").slice(-120) || "image.png";
}

/**
 * Uploads an input file as an asset. When the server already holds the same bytes for this
 * tenant (HEAD by-hash), mints an asset over them instead of sending the bytes again.
 */
export async function uploadInput(
  client: ApiClient,
  file: File,
  onProgress: (p: UploadProgress & { phase: "hashing" | "uploading" }) => void,
  signal?: AbortSignal,
): Promise<{ asset: Asset; reused: boolean }> {
  const filePath = safeFileName(file.name);
  let hash: string | null = null;
  try {
    onProgress({ loaded: 0, total: file.size, phase: "hashing" });
    if (file.size <= 64 * 1024 * 1024) hash = blake3Hash(new Uint8Array(await file.arrayBuffer()));
  } catch {
    hash = null;
  }
  if (hash) {
    try {
      if (await client.assetExistsByHash(hash)) {
        const asset = await client.assetFromHash(hash, filePath, ["input"]);
        onProgress({ loaded: file.size, total: file.size, phase: "uploading" });
        return { asset, reused: true };
      }
    } catch {
      /* the fast path is an optimisation: fall back to a full upload */
    }
  }
  const asset = await client.uploadAsset(file, {
    filePath,
    contentType: file.type || "application/octet-stream",
    tags: ["input"],
    onProgress: (p) => onProgress({ ...p, phase: "uploading" }),
    signal,
  });
  return { asset, reused: false };
}
