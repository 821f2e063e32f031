// Baseline: the PyCon 2019 talk's worker shape in Go (standard library only), for scripts/bench.
// scripts/bench builds it with `go build` (GOPROXY=off, no modules) and runs it with
// GOMAXPROCS=1, i.e. on one core like mayhem's one loop thread.
//
// A publisher goroutine sends JSON payloads into a bounded channel; the consumer takes each one
// and starts a goroutine for it without waiting (the talk's create_task); the goroutine parses
// the JSON, derives the host name, runs save() and restartHost() (zero latency) concurrently and
// waits for both (the talk's gather), then "acks" by counting. In flight is capped like
// mayhem's --max-in-flight, and ids are formatted cheaply (run prefix + sequence number), as
// mayhem's simulator does. Prints one summary line shaped like mayhem's.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type message struct {
	MessageID    string `json:"message_id"`
	InstanceName string `json:"instance_name"`
	Hostname     string `json:"-"`
}

const alnum = "abcdefghijklmnopqrstuvwxyz0123456789"

func publish(out chan<- []byte, n int) {
	var b [6]byte
	rand.Read(b[:])
	run := hex.EncodeToString(b[:])
	prefix := `{"message_id":"` + run[:8] + "-" + run[8:] + "-4000-8000-"
	for seq := 0; seq < n; seq++ {
		buf := make([]byte, 0, 96)
		buf = append(buf, prefix...)
		hexSeq := strconv.FormatUint(uint64(seq), 16)
		for i := len(hexSeq); i < 12; i++ {
			buf = append(buf, '0')
		}
		buf = append(buf, hexSeq...)
		buf = append(buf, `","instance_name":"cattle-`...)
		for k := 0; k < 4; k++ {
			buf = append(buf, alnum[(seq*7+k*13)%36])
		}
		buf = append(buf, `"}`...)
		out <- buf
	}
	close(out)
}

func save(m *message) error        { return nil }
func restartHost(m *message) error { return nil }

func main() {
	messages := flag.Int("messages", 200000, "messages to process")
	maxInFlight := flag.Int("max-in-flight", 1000, "messages processed concurrently")
	queueCapacity := flag.Int("queue-capacity", 64, "bounded queue between publisher and consumer")
	flag.Parse()

	var received, acked, deadLettered atomic.Uint64
	queue := make(chan []byte, *queueCapacity)
	slots := make(chan struct{}, *maxInFlight)
	var all sync.WaitGroup

	handle := func(raw []byte) {
		defer func() { <-slots; all.Done() }()
		var m message
		if err := json.Unmarshal(raw, &m); err != nil || m.InstanceName == "" {
			deadLettered.Add(1)
			return
		}
		m.Hostname = m.InstanceName + ".example.net"
		var errs [2]error
		var both sync.WaitGroup
		both.Add(2)
		go func() { errs[0] = save(&m); both.Done() }()
		go func() { errs[1] = restartHost(&m); both.Done() }()
		both.Wait()
		if errs[0] == nil && errs[1] == nil {
			acked.Add(1) // ack
		} else {
			deadLettered.Add(1)
		}
	}

	start := time.Now()
	go publish(queue, *messages)
	for raw := range queue {
		received.Add(1)
		slots <- struct{}{}
		all.Add(1)
		go handle(raw)
	}
	all.Wait()
	seconds := time.Since(start).Seconds()
	done := acked.Load() + deadLettered.Load()
	fmt.Printf(`{"received":%d,"acked":%d,"retried":0,"dead_lettered":%d,"skipped":0,`+
		`"released":0,"lease_extensions":0,"abandoned":0,"seconds":%.3f,"msgs_per_s":%.1f}`+"\n",
		received.Load(), acked.Load(), deadLettered.Load(), seconds, float64(done)/seconds)
}
