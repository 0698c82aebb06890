// Calls a cecollm edge node through the official `openai` npm package, unchanged, as any
// OpenAI client would: one plain completion (sampled, seeded) and one streamed (greedy), then a
// chat completion plain and streamed (greedy).
// Prints one JSON line with the texts and token ids for test_openai_clients.sh to compare.
import OpenAI from 'openai';

const [baseURL, model, prompt] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'not-needed', maxRetries: 0, timeout: 120000 });

const plain = await client.completions.create({
  model, prompt, max_tokens: 24, temperature: 0.8, seed: 7,
  x_ce: { threshold: 2 },  // every token from the cloud's final layer
});

const stream = await client.completions.create({
  model, prompt, max_tokens: 24, temperature: 0, stream: true, x_ce: { threshold: 2 },
});
let text = '';
const ids = [];
let finish = null;
for await (const chunk of stream) {
  text += chunk.choices[0]?.text ?? '';
  finish = chunk.choices[0]?.finish_reason ?? finish;
  for (const t of chunk.x_ce?.tokens ?? []) ids.push(t.id);
}

const messages = [{ role: 'user', content: prompt }];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 16, temperature: 0, x_ce: { threshold: 2 } });
const chatStream = await client.chat.completions.create({
  model, messages, max_completion_tokens: 16, temperature: 0, stream: true, x_ce: { threshold: 2 },
});
let chatText = '';
let chatRole = null;
const chatIds = [];
for await (const chunk of chatStream) {
  chatRole = chunk.choices[0]?.delta?.role ?? chatRole;
  chatText += chunk.choices[0]?.delta?.content ?? '';
  for (const t of chunk.x_ce?.tokens ?? []) chatIds.push(t.id);
}

const models = await client.models.list();
console.log(JSON.stringify({
  models: models.data.map((m) => m.id),
  plain: { text: plain.choices[0].text, ids: plain.x_ce.tokens.map((t) => t.id), finish: plain.choices[0].finish_reason,
           usage: plain.usage },
  stream: { text, ids, finish },
  chat: { text: chat.choices[0].message.content, role: chat.choices[0].message.role, object: chat.object,
          ids: chat.x_ce.tokens.map((t) => t.id) },
  chat_stream: { text: chatText, role: chatRole, ids: chatIds },
}));
