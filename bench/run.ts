// `npm run bench`: benchmarks (not timed tests) that print tables of medians and ratios
// to baselines measured in the same run.
import { benchStartup } from './startup.js';

benchStartup();
