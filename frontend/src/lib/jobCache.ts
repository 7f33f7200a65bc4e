import type { Job } from "../api/types";

// The job a submit just returned, so its page shows at once.
const cache = new Map<string, Job>();
export const rememberJob = (j: Job) => cache.set(j.id, j);
export const cachedJob = (id: string) => cache.get(id);
