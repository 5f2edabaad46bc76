/** kimi-linear-edge/host: the edge assembled for a host (app + router), and the Node server. */
export { createEdge, type Edge, type EdgeOptions } from './edge.js';
export { startNodeServer, type NodeServerOptions } from './node.js';
