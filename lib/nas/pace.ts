// A bandwidth cap for layer uploads (the configuration's checkpointRateMBps: pushes
// made while the VM runs share the link with the person's own traffic). Both
// transports read the layer through pacedStream when a cap is set; without one, the
// bytes never pass through Node (ssh-transport.ts).
import { Transform } from 'node:stream';

/** Bytes per MB of checkpointRateMBps (decimal, as link speeds are told). */
export const RATE_UNIT = 1_000_000;

/** Pieces a chunk is cut into, so that a low cap sends smoothly, not in bursts of a read's size. */
const PIECE_BYTES = 256 * 1024;

/**
 * How long to wait before sending more, having sent `bytesSent` in `elapsedMs` at a cap
 * of `bytesPerSecond`: 0 while the stream is behind its cap. Pure.
 */
export function paceDelayMs(bytesSent: number, elapsedMs: number, bytesPerSecond: number): number {
  return Math.max(0, Math.ceil((bytesSent / bytesPerSecond) * 1000 - elapsedMs));
}

/** A pass-through stream that holds its output at no more than `bytesPerSecond` on average. */
export function pacedStream(bytesPerSecond: number): Transform {
  const started = Date.now();
  let sent = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      const sendFrom = (at: number): void => {
        if (at >= chunk.length) return callback();
        const piece = chunk.subarray(at, at + PIECE_BYTES);
        sent += piece.length;
        this.push(piece);
        const wait = paceDelayMs(sent, Date.now() - started, bytesPerSecond);
        if (wait === 0) sendFrom(at + piece.length);
        else setTimeout(() => sendFrom(at + piece.length), wait);
      };
      sendFrom(0);
    },
  });
}
