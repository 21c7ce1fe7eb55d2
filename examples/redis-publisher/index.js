// POST /orders sends its JSON body as an `order` event to every browser on
// GET /events/orders, through any ssegate started with --cluster and --sse-redis /events.
import express from "express";
import { createClient } from "redis";

const redis = await createClient({ url: process.env.REDIS_URL }).on("error", console.error).connect();
const app = express().use(express.json());

app.post("/orders", async (req, res) => {
  const id = await redis.xAdd("ssegate:events:orders", "*", { event: "order", data: JSON.stringify(req.body) });
  res.status(201).json({ id });
});

const server = app.listen(process.env.PORT ?? 3000, "127.0.0.1", () => console.log(`listening ${server.address().port}`));
