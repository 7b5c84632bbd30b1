// proper-lockfile's own module behind its index, for its registry of held locks: the
// entry of a lock lost to another process must go, or its exit handler removes that
// process's lock directory (lib/lock.ts).
declare module 'proper-lockfile/lib/lockfile.js' {
  export function getLocks(): Record<string, { updateTimeout?: NodeJS.Timeout | null } | undefined>;
}
