import { Badge } from "@radix-ui/themes";
import type { JobStatus } from "../api/types";

const META: Record<string, { color: React.ComponentProps<typeof Badge>["color"]; label: string }> = {
  queued: { color: "amber", label: "Queued" },
  running: { color: "blue", label: "Running" },
  succeeded: { color: "green", label: "Succeeded" },
  canceling: { color: "orange", label: "Canceling" },
  canceled: { color: "gray", label: "Canceled" },
  failed: { color: "red", label: "Failed" },
  expired: { color: "gray", label: "Expired" },
};

export function StatusBadge({ status, size = "2" }: { status: JobStatus | string; size?: "1" | "2" | "3" }) {
  const m = META[status] ?? { color: "gray" as const, label: status };
  const live = status === "running" || status === "canceling";
  return (
    <Badge color={m.color} size={size} variant="soft" radius="full" className="status-badge" data-status={status} aria-label={`Status: ${m.label}`}>
      <span className={live ? "status-dot pulse" : "status-dot"} aria-hidden />
      {m.label}
    </Badge>
  );
}
